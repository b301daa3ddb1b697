"""Image embedding server speaking the Open Inference Protocol V2."""

import sys

__version__ = "0.1.0"

# OpenVINO's model converter (the export at start-up) and NNCF (int8) report usage to Google
# Analytics unless a consent file in the home folder says no, and they report from a process
# forked off a threaded one: an inference server must not call out of its network, and one
# such child hung in SSL set-up kept a test run from exiting. With the module unimportable
# both fall back to their own no-op stubs. Set before anything imports openvino (its
# package imports the converter).
sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
