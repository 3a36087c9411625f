"""One-line user messages from the exceptions of the libraries we read files with.

SimpleITK puts the C++ source location of the throw on the first line of every exception
("Exception thrown in SimpleITK ImageFileReader_Execute: .../sitkImageReaderBase.cxx:99:") and the reason
after it, with ITK's class name and object address, and for NRRD a chain of "[nrrd] ..." lines whose last is
the specific one. torch.load with weights_only=True explains how to load the file *unsafely*
(weights_only=False), which is advice a clinician must not get. These helpers keep only what tells the user
what is wrong with the file.
"""
from __future__ import annotations

import re

_ITK_LOCATION = re.compile(r"^Exception thrown in SimpleITK \S+: \S+:\d+:\s*$")
_ITK_PREFIX = re.compile(r"^(?:sitk|itk)::ERROR:\s*(?:\w+\(0x[0-9a-fA-F]+\):\s*)?")
_NRRD = re.compile(r"^\[nrrd\]\s*\w+:\s*")
_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def itk_error_text(exc: BaseException) -> str:
    """The reason of a SimpleITK / ITK exception, without source locations or object addresses, one line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not _ITK_LOCATION.match(ln)]
    if not lines:
        return type(exc).__name__
    main = _ITK_PREFIX.sub("", lines[0]).rstrip(":")
    main = re.sub(r"^ReadImageInformation:\s*", "", main)
    detail = [_NRRD.sub("", ln) for ln in lines[1:] if ln.startswith("[nrrd]")]
    if detail and detail[-1]:
        main = f"{main}: {detail[-1]}"
    elif len(lines) > 1 and not detail:
        main = f"{main}: {_ITK_PREFIX.sub('', lines[-1])}"
    return main


def torch_load_error_text(exc: BaseException) -> str:
    """Why torch.load(weights_only=True) refused or failed on a file, without torch's advice to load it
    unsafely."""
    s = str(exc)
    if "weights_only" in s or "Weights only load failed" in s or type(exc).__name__ == "UnpicklingError":
        g = _UNSAFE_GLOBAL.search(s)
        what = f" (it names {g.group(1)})" if g else ""
        return ("it holds Python objects besides tensors" + what + "; such files can run code when loaded, so "
                "they are refused. Use a .safetensors file, or a .pth state dict of tensors only")
    first = next((ln.strip() for ln in s.splitlines() if ln.strip()), type(exc).__name__)
    return first
