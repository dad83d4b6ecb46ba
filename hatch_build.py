"""Build hook: compile aipc's optional C helper (``aipc/_ringc.c``).

The helper runs the per-message steps of the shared-memory rings in C (see
docs/rings.md). It is optional: without a C compiler, or with
``AIPC_NO_COMPILE=1`` in the environment, the build warns and makes a pure
Python wheel, and aipc runs the same steps in Python. An editable install
(``pip install -e .``) compiles it next to the source, where the import finds
it; a wheel carries it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sysconfig
import tempfile
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

_SOURCE = os.path.join("aipc", "_ringc.c")


class CompileHelper(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        self._tmp: str | None = None
        if self.target_name != "wheel":
            return
        if os.environ.get("AIPC_NO_COMPILE", "") not in ("", "0"):
            self.app.display_info("aipc: AIPC_NO_COMPILE set, pure Python build")
            return
        name = "_ringc" + (sysconfig.get_config_var("EXT_SUFFIX") or ".so")
        if version == "editable":
            out = os.path.join(self.root, "aipc", name)
        else:
            self._tmp = tempfile.mkdtemp(prefix="aipc-build-")
            out = os.path.join(self._tmp, name)
        cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
        include = sysconfig.get_paths()["include"]
        command = [
            *cc,
            "-O2",
            "-shared",
            "-fPIC",
            "-Wall",
            f"-I{include}",
            os.path.join(self.root, _SOURCE),
            "-o",
            out,
        ]
        try:
            subprocess.run(command, check=True, capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", None) or str(exc)
            self.app.display_warning(
                "aipc: the optional C helper did not compile; aipc runs the "
                f"same steps in Python (slower rings).\n{' '.join(command)}\n{detail}"
            )
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        if version != "editable":
            build_data["force_include"][out] = f"aipc/{name}"

    def finalize(
        self, version: str, build_data: dict[str, Any], artifact_path: str
    ) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
