"""Image and structure-factor files: a ``read_*``/``write_*`` pair per image format.

=========  ==========================  ============================================
format     write                       read
=========  ==========================  ============================================
raw float  :func:`write_float`         :func:`read_float` -> float32 (slow, fast)
SMV        :func:`write_smv`           :func:`read_smv` -> (header dict, uint16)
CBF        :func:`write_cbf`           :func:`read_cbf` -> (header dict, int32)
NeXus      :func:`write_nexus`         :func:`read_nexus` -> (geometry, image, mask)
PGM        :func:`write_pgm`           :func:`read_pgm` -> (uint8, comment)
any        :func:`write_image`         :func:`read_image` -> (image, geometry)
=========  ==========================  ============================================

Structure factors: :func:`read_structure_factors` (``h k l F`` text, MTZ,
mmCIF structure factors, or an atomic model through gemmi) and
:func:`write_hkl`.  Nothing here imports the command line (``cli``); fabio,
h5py and gemmi are imported only inside the functions that need them.
"""
from .cbf import read_cbf, write_cbf
from .formats import FormatError, frame_metadata, read_image, write_image
from .hkl import HKLData, InputFileError, read_fdump, read_hkl, write_fdump
from .nexus import read_nexus, write_nexus
from .pgm import read_pgm, write_pgm
from .raw import read_float, write_float
from .smv import read_smv, write_smv
from .structure import read_structure_factors, write_hkl

__all__ = ["read_float", "write_float", "read_smv", "write_smv", "read_cbf", "write_cbf",
           "read_nexus", "write_nexus", "read_pgm", "write_pgm", "read_image", "write_image",
           "frame_metadata", "FormatError", "InputFileError", "HKLData", "read_hkl", "read_fdump",
           "write_fdump", "read_structure_factors", "write_hkl"]
