"""A static site to look at subcomponents and edits: `comptune browse`."""

from .._lazy import lazy_exports

__all__ = ["BrowseConfig", "build_site", "describe_edit"]

# imported on first use (comptune --help must not import torch)
__getattr__, __dir__ = lazy_exports(__name__, {
    "BrowseConfig": ".site",
    "build_site": ".site",
    "describe_edit": ".edits",
})
