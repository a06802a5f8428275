"""The offline robustness benchmark, built from registry packages (``arf data build``)."""

from arf.data.offline.build import VERSION, BuildConfig, build, is_built, plan
from arf.data.offline.checks import LeakError, check_disjoint, find_leaks

__all__ = ["VERSION", "BuildConfig", "LeakError", "build", "check_disjoint", "find_leaks", "is_built", "plan"]
