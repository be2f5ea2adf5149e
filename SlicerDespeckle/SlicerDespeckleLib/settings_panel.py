"""The panel's settings that explain themselves: method description, controls that apply, the log.

Toolkit-neutral, as ``panel.py``: only ``setEnabled``, ``setToolTip``, ``setText``, ``setChecked``
and ``appendPlainText``, which PythonQt (Slicer) and PySide6 share, so the tests drive the real
``.ui`` with PySide6. What applies to which method is decided by :func:`control_states`, a pure
function; :func:`show_states` puts its answer on the widgets.

The texts come from the runtime's ``usdespeckle/runtime/options.py`` (``METHOD_DESCRIPTIONS``,
``METHOD_REFERENCES``), where every option of the project is declared once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from SlicerDespeckleLib.gpu import GpuStatus
from SlicerDespeckleLib.process import library_module

_OPTIONS = library_module("options")
METHOD_DESCRIPTIONS: dict[str, str] = _OPTIONS.METHOD_DESCRIPTIONS
METHOD_REFERENCES: dict[str, str] = _OPTIONS.METHOD_REFERENCES

#: Widgets whose state depends on the method (their labels follow them).
CONTROLS: tuple[str, ...] = (
    "deviceComboBox",
    "backendComboBox",
    "passesComboBox",
    "uncertaintyCheckBox",
    "eightBitCheckBox",
)
LABELS: dict[str, str] = {
    "deviceComboBox": "deviceLabel",
    "backendComboBox": "backendLabel",
    "passesComboBox": "passesLabel",
}


@dataclass(frozen=True)
class ControlState:
    """Whether a control applies, and the tooltip that says why not when it does not."""

    enabled: bool
    why_not: str = ""


def method_texts(method: str) -> tuple[str, str]:
    """``(one-line description, reference)`` of a method; empty strings for an unknown one."""
    return METHOD_DESCRIPTIONS.get(method, ""), METHOD_REFERENCES.get(method, "")


def control_states(
    method: str, *, server: bool, eight_bit_input: bool, gpu: GpuStatus | None
) -> dict[str, ControlState]:
    """Which of :data:`CONTROLS` do something for these settings.

    Args:
        method: the chosen method.
        server: a MONAI Label server runs the work (device and backend then name the server's, so
            the GPU of this computer does not matter).
        eight_bit_input: the input's voxels are unsigned 8-bit.
        gpu: whether the chosen backend can use a GPU here (None: not known yet).

    Returns:
        ``{widget name: state}`` for every name in :data:`CONTROLS`.
    """
    network = method == "denoiser"
    only_network = f"Only the denoiser uses this; '{method}' is a classical filter."
    states = {
        "backendComboBox": ControlState(network, "" if network else only_network),
        "passesComboBox": ControlState(network, "" if network else only_network),
        "uncertaintyCheckBox": ControlState(network, "" if network else only_network),
        "eightBitCheckBox": ControlState(
            eight_bit_input,
            "" if eight_bit_input else "The input is not 8-bit: the result stays floating point.",
        ),
    }
    if not network:
        states["deviceComboBox"] = ControlState(False, only_network + " Classical filters run on the CPU.")
    elif server:
        states["deviceComboBox"] = ControlState(True)
    elif gpu is not None and not gpu.usable:
        states["deviceComboBox"] = ControlState(False, f"No GPU usable here: {gpu.reason}. The CPU is used.")
    else:
        states["deviceComboBox"] = ControlState(True)
    return states


def show_states(ui: Any, states: dict[str, ControlState], tooltips: dict[str, str]) -> None:
    """Enable or disable the controls (and their labels); a disabled control's tooltip says why.

    Args:
        ui: object with the widgets named in ``states`` (and their labels, when present).
        states: from :func:`control_states`.
        tooltips: each control's own tooltip, shown when it is enabled.
    """
    for name, state in states.items():
        widget = getattr(ui, name)
        widget.setEnabled(state.enabled)
        own = tooltips.get(name, "")
        widget.setToolTip(own if state.enabled else f"{state.why_not}\n\n{own}".strip())
        label = getattr(ui, LABELS.get(name, ""), None)
        if label is not None:
            label.setEnabled(state.enabled)


def show_method(ui: Any, method: str) -> None:
    """Put the method's one-line description under the method choice, its reference as the tooltip."""
    description, reference = method_texts(method)
    ui.methodDescriptionLabel.setText(description)
    ui.methodDescriptionLabel.setToolTip(f"Reference: {reference}" if reference else "")


class PanelLogHandler(logging.Handler):
    """Sends the ``Despeckle`` logger's records to the panel's scrolling log (``appendPlainText``).

    Args:
        append: called with each formatted line, e.g. ``ui.logTextEdit.appendPlainText``.
    """

    def __init__(self, append) -> None:
        super().__init__(level=logging.INFO)
        self.append = append
        self.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.append(self.format(record))
        except Exception:  # a closed panel: the application log still has the line
            self.handleError(record)
