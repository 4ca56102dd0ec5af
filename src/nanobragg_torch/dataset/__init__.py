"""Whole datasets: rotation series and serial-crystallography shots.

    >>> from nanobragg_torch.dataset import load_spec, render_dataset
    >>> spec = load_spec("experiment.toml")
    >>> summary = render_dataset(spec, "out/")                       # this machine
    >>> summary = render_dataset(spec, "out/", scheduler="tcp://host:8786")   # a Dask cluster

The command ``nanobragg-dataset experiment.toml out/`` does the same.  See
``docs/dataset.md`` for the experiment file and the resume semantics.
"""
from .spec import DatasetSpec, Frame, SpecError, load_spec, spec_from_dict
from .render import render_frame
from .runner import Summary, dataset_status, render_dataset, verify_dataset
from .manifest import read_manifest, latest_records

__all__ = ["DatasetSpec", "Frame", "SpecError", "load_spec", "spec_from_dict", "render_frame",
           "Summary", "render_dataset", "verify_dataset", "dataset_status", "read_manifest",
           "latest_records"]
