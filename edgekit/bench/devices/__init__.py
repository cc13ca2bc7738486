"""Where a benchmark runs. One module per kind of device, found by the scheme of ``--device``:

* ``local`` (default) or a local accelerator name (``CPU``, ``GPU``, ``NPU``): ``local.py``
* ``ssh://user@host[:port]``: ``ssh.py`` copies the runner and artifact over OpenSSH
* ``adb://SERIAL``: ``adb.py`` runs TFLite's ``benchmark_model`` on an Android device

A device either starts runner processes (``protocol = "runner"``: ``start()`` returns a
:class:`~edgekit.bench.devices.process.RunnerProcess`) or runs the runtime's own benchmark tool
and returns its figures (``protocol = "tool"``: ``measure()``).

Each device parses its spec strictly: nothing from ``--device`` may reach ssh, scp or adb where
it could be read as an option.
"""

from __future__ import annotations

import importlib
from typing import Any

from edgekit.errors import UsageError

# scheme -> module. Adding a kind of device is adding its module here.
SCHEMES: dict[str, str] = {
    "ssh": "edgekit.bench.devices.ssh",
    "adb": "edgekit.bench.devices.adb",
}


def resolve(spec: str | None, **options: Any) -> Any:
    """The device object for ``spec``; ``options`` go to its constructor (each takes what it
    understands: ``remote_python``, ``ssh_config``, ``benchmark_binary``, timeouts…)."""
    spec = (spec or "local").strip()
    if "://" not in spec:
        from edgekit.bench.devices.local import LocalDevice

        return LocalDevice(spec, **options)
    scheme = spec.split("://", 1)[0].lower()
    if scheme not in SCHEMES:
        raise UsageError(
            f"--device {shown(spec)}: unknown device kind '{scheme}://'; use local, an accelerator "
            f"name (CPU, GPU, NPU) or one of: {', '.join(f'{s}://' for s in SCHEMES)}"
        )
    return importlib.import_module(SCHEMES[scheme]).DEVICE_CLASS(spec, **options)


def shown(text: str) -> str:
    """``text`` for a one-line message: as it is, or quoted with escapes when it holds a
    newline or another character the terminal would not print."""
    return text if text.isprintable() else repr(text)
