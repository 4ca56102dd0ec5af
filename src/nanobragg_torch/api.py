"""Building the Python API's models from nanoBragg command-line flags.

    >>> from nanobragg_torch import from_args, simulate
    >>> s = from_args("-cell 70 80 90 75 85 95 -default_F 100 -lambda 1.0 -N 5 "
    ...               "-distance 100 -detpixels 64 -misset 10 20 30")
    >>> simulate(s.crystal, s.detector, s.beam, s.structure_factors, s.options).image.shape
    torch.Size([64, 64])

Every convention, default and quirk of the C program (beam-centre
conventions, pivots, step-count rules, the random misset and mosaic domains
from its generator, structure-factor files) is applied exactly as the command
line applies it, so the models render the same image as ``nanoBragg`` with
those flags.  Their fields can then be replaced by tensors that require grad::

    s.detector.distance = torch.nn.Parameter(torch.tensor(0.1, dtype=torch.float64))
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Union

from .config import SimulationOptions
from .models import Beam, Crystal, Detector, StructureFactors


class Setup(NamedTuple):
    """The four models and the options, as :func:`from_args` returns them."""
    crystal: Crystal
    detector: Detector
    beam: Beam
    structure_factors: StructureFactors
    options: SimulationOptions


def from_args(args: Union[str, Sequence[str]], cwd: str = ".", dtype: Optional[str] = "float64") -> Setup:
    """Models from nanoBragg flags (a string or a list of arguments, without the program name).

    Args:
        args: the flags, e.g. ``"-cell 70 80 90 90 90 90 -N 5 -default_F 100 -detpixels 64"``.
        cwd: directory that relative file names (``-hkl``, ``-mat``, ...) are read from.
        dtype: compute dtype of the returned options ("float64" by default,
            unlike the command line's float32; None keeps the flags' ``-dtype``).

    Returns:
        :class:`Setup` (crystal, detector, beam, structure_factors, options).
        Without ``-seed``/``-misset_seed`` the C program's clock-based seeds are used.
    """
    from .pipeline import setup_from_args
    st = setup_from_args(args, cwd=cwd)
    if dtype is not None:
        st.options.dtype = dtype
    return Setup(crystal=Crystal(st.crystal), detector=Detector(st.detector), beam=Beam(st.beam),
                 structure_factors=StructureFactors(st.structure_factors), options=st.options)
