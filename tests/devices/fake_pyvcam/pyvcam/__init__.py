"""A fake of Photometrics' ``pyvcam`` package, for running ``PyVcamBackend`` without the SDK.

Not a simulator of a camera for users (that is ``daqbridge.sim.pvcam``): a stand-in with the
real package's API surface, written from the real package's source, that records every call so
a test can check what the backend asked of the SDK and in which order. A test fixture puts the
directory holding this package on ``sys.path``; nothing else may import it.

Modules, as in the real package:

- ``pyvcam.pvc``: the C extension (``src/pyvcam/pvcmodule.cpp``), here in Python over a fake
  PVCAM library and camera (``pvc.sdk``, the test's handle on it; ``pvc.calls``, the record).
- ``pyvcam.camera``: ``Camera`` (``src/pyvcam/camera.py``), written afresh with the same method
  and property names, signatures and exceptions.
- ``pyvcam.constants``: the subset of the generated ``src/pyvcam/constants.py`` the backend and
  the fake use, with the real names and values.

Sources read (stored copies of github.com/Photometrics/PyVCAM):

- ``src/pyvcam/camera.py`` (commit 0a9ba6f3): ``Camera`` API, ``check_frame_status`` forcing
  READOUT_NOT_ACTIVE when no acquisition is set up, ``binning`` accepting a tuple, ``exp_time``
  checked against PARAM_EXPOSURE_TIME min/max, ``finish`` choosing abort / finish_seq.
- ``src/pyvcam/pvcmodule.cpp`` (commits 06f7eee1 and df0f4251): the ``pvc`` method table, the
  status strings of ``check_frame_status`` (FRAME_AVAILABLE reads READOUT_COMPLETE in sequence
  mode; any other value is ``ValueError("Unrecognized frame status (N).")``; a PV_FAIL from
  ``pl_exp_check_status`` is a RuntimeError with PVCAM's message), and ``get_frame``'s errors
  ("Frame readout failed.", "Acquisition not active.", "Acquisition aborted.", "Frame
  timeout. ..."; older: "get_frame() readout failed.", "frame timeout. ..."). The live queue
  drops its oldest frame when full ("Lost frame").
- ``src/pyvcam/constants.py`` (commit 856be42d) and ``pvcam-sdk/linux/include/pvcam.h``:
  PL_IMAGE_STATUSES 0..6; pvcam.h (PVCAM 3.x) says a READOUT_FAILED comes with PV_FAIL and that
  ACQUISITION_IN_PROGRESS is deprecated and unused; the PVCAM 2.x header (Roper Scientific
  2012, openspim/3rdpartypublic ``Photometrics/PVCAM/SDK/Headers/pvcam.h``) maps a RUNNING
  driver onto ACQUISITION_IN_PROGRESS. ``pvc.sdk.running_status = 5`` plays such a driver.
"""
