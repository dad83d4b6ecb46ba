"""Build hook: compile aipc's optional C helpers.

``aipc/_ringc.c`` runs the per-message steps of the shared-memory rings in C
(see docs/rings.md); ``aipc/_core/_corec.c`` the checkpoint's decision that
every send and receive asks, the readiness watcher's steps and the common
case of a pipe's send and receive (see docs/core.md). They are optional: without a
C compiler, or with ``AIPC_NO_COMPILE=1`` in the environment, the build warns
and makes a pure Python wheel, and aipc runs the same steps in Python. An
editable install (``pip install -e .``) compiles them next to the source,
where the import finds them; a wheel carries them.
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

#: (package directory, module name): each compiles from <directory>/<name>.c
_HELPERS = (("aipc", "_ringc"), (os.path.join("aipc", "_core"), "_corec"))


class CompileHelper(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        self._tmp: str | None = None
        if self.target_name != "wheel":
            return
        if os.environ.get("AIPC_NO_COMPILE", "") not in ("", "0"):
            self.app.display_info("aipc: AIPC_NO_COMPILE set, pure Python build")
            return
        suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
        if version != "editable":
            self._tmp = tempfile.mkdtemp(prefix="aipc-build-")
        cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
        include = sysconfig.get_paths()["include"]
        built = {}
        for directory, module in _HELPERS:
            if self._tmp is None:
                out = os.path.join(self.root, directory, module + suffix)
            else:
                out = os.path.join(self._tmp, module + suffix)
            command = [
                *cc,
                "-O2",
                "-shared",
                "-fPIC",
                "-Wall",
                f"-I{include}",
                os.path.join(self.root, directory, module + ".c"),
                "-o",
                out,
            ]
            try:
                subprocess.run(command, check=True, capture_output=True, text=True)
            except (OSError, subprocess.CalledProcessError) as exc:
                detail = getattr(exc, "stderr", None) or str(exc)
                self.app.display_warning(
                    f"aipc: the optional C helper {module} did not compile; aipc "
                    "runs the same steps in Python (slower).\n"
                    f"{' '.join(command)}\n{detail}"
                )
                continue
            built[out] = f"{directory}/{module}{suffix}".replace(os.sep, "/")
        if not built:
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        if version != "editable":
            build_data["force_include"].update(built)

    def finalize(
        self, version: str, build_data: dict[str, Any], artifact_path: str
    ) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
