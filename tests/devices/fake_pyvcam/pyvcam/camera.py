"""A fake of ``pyvcam.camera``: ``Camera`` with the real class's methods and properties.

Names, signatures, defaults and exceptions follow Photometrics/PyVCAM ``src/pyvcam/camera.py``
(commit 0a9ba6f3); the bodies are this fake's own and talk to the fake ``pyvcam.pvc``. Every
method call and property assignment is recorded in ``pvc.calls`` as ``("Camera.<name>", ...)``
(assignments as ``"Camera.<name>="``) before it runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from pyvcam import constants as const
from pyvcam import pvc


def _log(name: str, *args: Any) -> None:
    pvc.calls.append((f"Camera.{name}", *args))


class Camera:
    """One PVCAM camera, found by ``detect_camera`` or ``select_camera``."""

    WAIT_FOREVER = -1

    class ReversibleEnumDict(dict):
        """Enum names to values; indexing by a value gives its name (as pyvcam's does)."""

        def __init__(self, name: str, camera: Camera | None = None, param_id: int = 0) -> None:
            items = {}
            if camera is not None and param_id != 0:
                try:
                    items = camera.read_enum(param_id)
                except AttributeError:
                    pass
            super().__init__(items)
            self.name = name
            self._camera = camera

        def __getitem__(self, key_or_value: Any) -> Any:
            if self._camera is None or not self._camera.is_open:
                raise RuntimeError(f"Failed to access {self.name} enum, camera is not open")
            if isinstance(key_or_value, str):
                if key_or_value not in self:
                    raise ValueError(
                        f"Invalid key '{key_or_value}' for {self.name} - Available keys are: "
                        f"{list(self.keys())}"
                    )
                return super().__getitem__(key_or_value)
            for key, value in self.items():
                if value == key_or_value:
                    return key
            raise ValueError(
                f"Invalid value '{key_or_value}' for {self.name} - Available values are: "
                f"{list(self.values())}"
            )

    class RegionOfInterest:
        def __init__(self, s1: int, s2: int, sbin: int, p1: int, p2: int, pbin: int) -> None:
            if min(s1, s2, p1, p2) < 0:
                raise ValueError("Coordinates must be >= 0")
            if s1 > s2:
                raise ValueError("Coordinates must be s1 <= s2")
            if p1 > p2:
                raise ValueError("Coordinates must be p1 <= p2")
            if sbin <= 0 or pbin <= 0:
                raise ValueError("Binning must be >= 1")
            self.s1, self.sbin, self.p1, self.pbin = s1, sbin, p1, pbin
            self.s2 = s2 - ((s2 - s1 + 1) % sbin)  # pyvcam clips partial bins
            self.p2 = p2 - ((p2 - p1 + 1) % pbin)

        def __eq__(self, other: object) -> bool:
            if not isinstance(other, Camera.RegionOfInterest):
                raise NotImplementedError
            return (self.s1, self.s2, self.p1, self.p2) == (other.s1, other.s2, other.p1, other.p2)

        def check_overlap(self, other: Camera.RegionOfInterest) -> bool:
            return not (
                self.s2 < other.s1 or other.s2 < self.s1 or self.p2 < other.p1 or other.p2 < self.p1
            )

        @property
        def shape(self) -> tuple[int, int]:
            return (self.s2 - self.s1 + 1) // self.sbin, (self.p2 - self.p1 + 1) // self.pbin

    def __init__(self, name: str) -> None:
        _log("__init__", name)
        self.__name = name
        self.__handle = -1
        self.__is_open = False
        self.__sensor_size = (0, 0)
        self.__acquisition_mode: str | None = None
        self.__exp_mode = const.TIMED_MODE
        self.__exp_out_mode = const.EXPOSE_OUT_FIRST_ROW
        self.__mode = self.__exp_mode | self.__exp_out_mode
        self.__exp_time = 0
        self.__default_roi = Camera.RegionOfInterest(0, 0, 1, 0, 0, 1)
        self.__rois: list[Camera.RegionOfInterest] = []
        self.__limited_binnings: list[tuple[int, int]] | None = None
        self.__readout_ports = Camera.ReversibleEnumDict("readout_ports")
        self.__exp_modes = Camera.ReversibleEnumDict("exp_modes")
        self.__exp_out_modes = Camera.ReversibleEnumDict("exp_out_modes")
        self.__exp_resolutions = Camera.ReversibleEnumDict("exp_resolutions")
        self.__port_speed_gain_table: dict = {}
        self.__dtype = np.dtype("u2")

    def __repr__(self) -> str:
        return self.__name

    # --- finding and opening ----------------------------------------------------------------

    @staticmethod
    def get_available_camera_names() -> list[str]:
        _log("get_available_camera_names")
        return [pvc.get_cam_name(i) for i in range(pvc.get_cam_total())]

    @classmethod
    def detect_camera(cls) -> Iterator[Camera]:
        _log("detect_camera")
        for index in range(pvc.get_cam_total()):
            try:
                yield Camera(pvc.get_cam_name(index))
            except RuntimeError as ex:
                raise RuntimeError("Failed to create a detected camera.") from ex

    @classmethod
    def select_camera(cls, name: str) -> Camera:
        _log("select_camera", name)
        for index in range(pvc.get_cam_total()):
            if pvc.get_cam_name(index) == name:
                return Camera(name)
        raise RuntimeError("Failed to create a detected camera. Invalid name")

    def open(self) -> None:
        _log("open")
        try:
            self.__handle = pvc.open_camera(self.__name)
            self.__is_open = True
        except RuntimeError as ex:
            raise RuntimeError("Failed to open camera.") from ex
        try:
            self.get_param(const.PARAM_FRAME_CAPABLE)
            self.set_param(const.PARAM_PMODE, const.PMODE_FT)
        except AttributeError:
            self.set_param(const.PARAM_PMODE, const.PMODE_NORMAL)
        self.__sensor_size = (
            self.get_param(const.PARAM_SER_SIZE),
            self.get_param(const.PARAM_PAR_SIZE),
        )
        w, h = self.__sensor_size
        self.__default_roi = Camera.RegionOfInterest(0, w - 1, 1, 0, h - 1, 1)
        self.reset_rois()
        if self.check_param(const.PARAM_BINNING_SER) and self.check_param(const.PARAM_BINNING_PAR):
            xs = self.read_enum(const.PARAM_BINNING_SER).values()
            ys = self.read_enum(const.PARAM_BINNING_PAR).values()
            self.__limited_binnings = list(zip(xs, ys, strict=False))
        self.__exp_mode = self.get_param(const.PARAM_EXPOSURE_MODE)
        self.__exp_out_mode = (
            self.get_param(const.PARAM_EXPOSE_OUT_MODE)
            if self.check_param(const.PARAM_EXPOSE_OUT_MODE)
            else 0
        )
        self.__mode = self.__exp_mode | self.__exp_out_mode
        self.__readout_ports = Camera.ReversibleEnumDict(
            "readout_ports", self, const.PARAM_READOUT_PORT
        )
        self.__exp_modes = Camera.ReversibleEnumDict("exp_modes", self, const.PARAM_EXPOSURE_MODE)
        self.__exp_out_modes = Camera.ReversibleEnumDict(
            "exp_out_modes", self, const.PARAM_EXPOSE_OUT_MODE
        )
        self.__exp_resolutions = Camera.ReversibleEnumDict(
            "exp_resolutions", self, const.PARAM_EXP_RES
        )
        table: dict = {}
        for port_name, port_value in self.read_enum(const.PARAM_READOUT_PORT).items():
            self.readout_port = port_value
            table[port_name] = {"port_value": port_value}
            for speed_index in range(self.get_param(const.PARAM_SPDTAB_INDEX, const.ATTR_COUNT)):
                self.speed = speed_index
                low = self.get_param(const.PARAM_GAIN_INDEX, const.ATTR_MIN)
                high = self.get_param(const.PARAM_GAIN_INDEX, const.ATTR_MAX)
                step = self.get_param(const.PARAM_GAIN_INDEX, const.ATTR_INCREMENT)
                table[port_name][self.speed_name] = {
                    "speed_index": speed_index,
                    "pixel_time": self.pix_time,
                    "bit_depth": self.bit_depth,
                    "gain_range": list(range(low, high + 1, step)),
                }
        self.__port_speed_gain_table = table
        self.readout_port = 0
        self.speed = 0

    def close(self) -> None:
        _log("close")
        try:
            pvc.close_camera(self.__handle)
        except (RuntimeError, KeyError) as ex:
            raise RuntimeError("Failed to close camera.") from ex
        self.__handle = -1
        self.__is_open = False
        self.__acquisition_mode = None
        self.__rois = []
        self.__limited_binnings = None

    # --- parameters -------------------------------------------------------------------------

    def get_param(self, param_id: int, param_attr: int = const.ATTR_CURRENT) -> Any:
        _log("get_param", param_id, param_attr)
        return pvc.get_param(self.__handle, param_id, param_attr)

    def set_param(self, param_id: int, value: Any) -> None:
        _log("set_param", param_id, value)
        pvc.set_param(self.__handle, param_id, value)

    def check_param(self, param_id: int) -> bool:
        _log("check_param", param_id)
        return pvc.check_param(self.__handle, param_id)

    def read_enum(self, param_id: int) -> dict[str, int]:
        _log("read_enum", param_id)
        return pvc.read_enum(self.__handle, param_id)

    def reset_pp(self) -> None:
        _log("reset_pp")
        pvc.reset_pp(self.__handle)

    def _update_mode(self) -> None:
        self.__mode = self.__exp_mode | self.__exp_out_mode
        pvc.set_exp_modes(self.__handle, self.__mode)

    # --- regions ----------------------------------------------------------------------------

    def reset_rois(self) -> None:
        _log("reset_rois")
        if not self.__is_open:
            raise RuntimeError("Camera is not open")
        self.__rois = [self.__default_roi]

    def set_roi(self, s1: int, p1: int, w: int, h: int) -> None:
        _log("set_roi", s1, p1, w, h)
        if not self.__is_open:
            raise RuntimeError("Camera is not open")
        if w < 1 or h < 1:
            raise ValueError("Width and height must be >= 1")
        s2, p2 = s1 + w - 1, p1 + h - 1
        width, height = self.__sensor_size
        if not (0 <= s1 <= s2 < width and 0 <= p1 <= p2 < height):
            raise ValueError("Could not add ROI. ROI extends beyond limits of sensor")
        using_default = len(self.__rois) == 1 and self.__rois[0] == self.__default_roi
        most = self.get_param(const.PARAM_ROI_COUNT, const.ATTR_MAX)
        roi = Camera.RegionOfInterest(s1, s2, self.__rois[0].sbin, p1, p2, self.__rois[0].pbin)
        if most == 1 or using_default:
            self.__rois = [roi]
        elif len(self.__rois) < most:
            if any(r.check_overlap(roi) for r in self.__rois):
                raise ValueError("Could not add ROI. New ROI overlaps existing ROI")
            self.__rois.append(roi)
        else:
            raise ValueError(f"Could not add ROI. Camera only supports {most} rois")

    # --- acquisition ------------------------------------------------------------------------

    def check_frame_status(self) -> str:
        _log("check_frame_status")
        status = pvc.check_frame_status(self.__handle)
        # pyvcam reports READOUT_NOT_ACTIVE while it has no acquisition set up.
        return "READOUT_NOT_ACTIVE" if self.__acquisition_mode is None else status

    def poll_frame(
        self, timeout_ms: int = WAIT_FOREVER, oldestFrame: bool = True, copyData: bool = True
    ) -> tuple[dict, float, int]:
        _log("poll_frame", timeout_ms, oldestFrame, copyData)
        frame, fps, frame_count = pvc.get_frame(
            self.__handle, self.__rois, self.__dtype.num, timeout_ms, oldestFrame
        )
        if copyData:
            frame = dict(frame, pixel_data=[np.copy(a) for a in frame["pixel_data"]])
        if len(frame["pixel_data"]) == 1:
            frame["pixel_data"] = frame["pixel_data"][0]
        return frame, fps, frame_count

    def get_frame(
        self,
        exp_time: int | None = None,
        timeout_ms: int = WAIT_FOREVER,
        reset_frame_counter: bool = False,
    ) -> np.ndarray:
        _log("get_frame", exp_time, timeout_ms, reset_frame_counter)
        self.start_seq(exp_time=exp_time, reset_frame_counter=reset_frame_counter)
        frame, _, _ = self.poll_frame(timeout_ms=timeout_ms)
        self.finish()
        return frame["pixel_data"]

    def start_live(
        self,
        exp_time: int | None = None,
        buffer_frame_count: int = 16,
        stream_to_disk_path: str | None = None,
        reset_frame_counter: bool = False,
    ) -> None:
        _log("start_live", exp_time, buffer_frame_count, stream_to_disk_path, reset_frame_counter)
        if not isinstance(exp_time, int):
            exp_time = self.exp_time
        if reset_frame_counter:
            pvc.reset_frame_counter(self.__handle)
        self.__acquisition_mode = "Live"
        pvc.start_live(
            self.__handle,
            self.__rois,
            exp_time,
            self.__mode,
            buffer_frame_count,
            stream_to_disk_path,
        )

    def start_seq(
        self, exp_time: int | None = None, num_frames: int = 1, reset_frame_counter: bool = False
    ) -> None:
        _log("start_seq", exp_time, num_frames, reset_frame_counter)
        if not isinstance(exp_time, int):
            exp_time = self.exp_time
        if reset_frame_counter:
            pvc.reset_frame_counter(self.__handle)
        self.__acquisition_mode = "Sequence"
        pvc.start_seq(self.__handle, self.__rois, exp_time, self.__mode, num_frames)

    def finish(self) -> None:
        _log("finish")
        if self.__acquisition_mode == "Live":
            pvc.abort(self.__handle)
        elif self.__acquisition_mode == "Sequence":
            pvc.finish_seq(self.__handle)
        self.__acquisition_mode = None

    def abort(self) -> None:
        """Deprecated in pyvcam: use ``finish``."""
        _log("abort")
        self.finish()

    def sw_trigger(self) -> None:
        _log("sw_trigger")
        pvc.sw_trigger(self.__handle)

    # --- properties -------------------------------------------------------------------------

    @property
    def handle(self) -> int:
        return self.__handle

    @property
    def is_open(self) -> bool:
        return self.__is_open

    @property
    def name(self) -> str:
        return self.__name

    @property
    def port_speed_gain_table(self) -> dict:
        return self.__port_speed_gain_table

    @property
    def readout_ports(self) -> Camera.ReversibleEnumDict:
        return self.__readout_ports

    @property
    def exp_modes(self) -> Camera.ReversibleEnumDict:
        return self.__exp_modes

    @property
    def exp_out_modes(self) -> Camera.ReversibleEnumDict:
        return self.__exp_out_modes

    @property
    def exp_resolutions(self) -> Camera.ReversibleEnumDict:
        return self.__exp_resolutions

    @property
    def chip_name(self) -> str:
        return self.get_param(const.PARAM_CHIP_NAME)

    @property
    def sensor_size(self) -> tuple[int, int]:
        if not self.__is_open:
            raise RuntimeError("Camera is not open")
        return self.__sensor_size

    @property
    def bit_depth(self) -> int:
        return self.get_param(const.PARAM_BIT_DEPTH)

    @property
    def pix_time(self) -> int:
        return self.get_param(const.PARAM_PIX_TIME)

    @property
    def readout_port(self) -> int:
        return self.get_param(const.PARAM_READOUT_PORT)

    @readout_port.setter
    def readout_port(self, key_or_value: Any) -> None:
        _log("readout_port=", key_or_value)
        value = (
            self.__readout_ports[key_or_value] if isinstance(key_or_value, str) else key_or_value
        )
        _ = self.__readout_ports[value]
        self.set_param(const.PARAM_READOUT_PORT, value)

    @property
    def speed(self) -> int:
        return self.get_param(const.PARAM_SPDTAB_INDEX)

    @speed.setter
    def speed(self, value: int) -> None:
        _log("speed=", value)
        entries = self.get_param(const.PARAM_SPDTAB_INDEX, const.ATTR_COUNT)
        if value >= entries:
            raise ValueError(f"{self} only supports {entries} speed entries")
        self.set_param(const.PARAM_SPDTAB_INDEX, value)

    @property
    def speed_name(self) -> str:
        return self.get_param(const.PARAM_SPDTAB_NAME)

    @property
    def gain(self) -> int:
        return self.get_param(const.PARAM_GAIN_INDEX)

    @gain.setter
    def gain(self, value: int) -> None:
        _log("gain=", value)
        low = self.get_param(const.PARAM_GAIN_INDEX, const.ATTR_MIN)
        high = self.get_param(const.PARAM_GAIN_INDEX, const.ATTR_MAX)
        if not low <= value <= high:
            raise ValueError(
                f"Invalid value: {value} - {self} only supports gain indices from {low} to {high}."
            )
        self.set_param(const.PARAM_GAIN_INDEX, value)

    @property
    def binnings(self) -> list[tuple[int, int]] | None:
        if not self.__is_open:
            raise RuntimeError("Camera is not open")
        return self.__limited_binnings

    @property
    def binning(self) -> tuple[int, int]:
        if not self.__is_open:
            raise RuntimeError("Camera is not open")
        return self.__rois[0].sbin, self.__rois[0].pbin

    @binning.setter
    def binning(self, value: int | tuple[int, int]) -> None:
        _log("binning=", value)
        if not self.__is_open:
            raise RuntimeError("Camera is not open")
        bin_x, bin_y = value if isinstance(value, tuple) else (value, value)
        if bin_x <= 0 or bin_y <= 0:
            raise ValueError("Binning must be >= 1")
        if self.__limited_binnings is not None and (bin_x, bin_y) not in self.__limited_binnings:
            raise ValueError(f"{self} only supports {self.__limited_binnings} binnings")
        for roi in self.__rois:
            roi.sbin, roi.pbin = bin_x, bin_y

    @property
    def rois(self) -> list[Camera.RegionOfInterest]:
        if not self.__is_open:
            raise RuntimeError("Camera is not open")
        return self.__rois

    def shape(self, roi_index: int = 0) -> tuple[int, int]:
        if not self.__is_open:
            raise RuntimeError("Camera is not open")
        return self.__rois[roi_index].shape

    @property
    def last_exp_time(self) -> int:
        return self.get_param(const.PARAM_EXPOSURE_TIME)

    @property
    def exp_res(self) -> int:
        return self.get_param(const.PARAM_EXP_RES)

    @exp_res.setter
    def exp_res(self, key_or_value: Any) -> None:
        _log("exp_res=", key_or_value)
        value = (
            self.__exp_resolutions[key_or_value] if isinstance(key_or_value, str) else key_or_value
        )
        _ = self.__exp_resolutions[value]
        self.set_param(const.PARAM_EXP_RES, value)

    @property
    def exp_time(self) -> int:
        if not self.__is_open:
            raise RuntimeError("Camera is not open")
        return self.__exp_time

    @exp_time.setter
    def exp_time(self, value: int) -> None:
        _log("exp_time=", value)
        low = self.get_param(const.PARAM_EXPOSURE_TIME, const.ATTR_MIN)
        high = self.get_param(const.PARAM_EXPOSURE_TIME, const.ATTR_MAX)
        if not low <= value <= high:
            raise ValueError(
                f"Invalid value: {value} - {self} only supports exposure times between "
                f"{low} and {high}"
            )
        self.__exp_time = value

    @property
    def exp_mode(self) -> int:
        return self.get_param(const.PARAM_EXPOSURE_MODE)

    @exp_mode.setter
    def exp_mode(self, key_or_value: Any) -> None:
        _log("exp_mode=", key_or_value)
        self.__exp_mode = (
            self.__exp_modes[key_or_value] if isinstance(key_or_value, str) else key_or_value
        )
        _ = self.__exp_modes[self.__exp_mode]
        self._update_mode()

    @property
    def exp_out_mode(self) -> int:
        return self.get_param(const.PARAM_EXPOSE_OUT_MODE)

    @property
    def temp(self) -> float:
        return self.get_param(const.PARAM_TEMP) / 100.0

    @property
    def temp_setpoint(self) -> float:
        return self.get_param(const.PARAM_TEMP_SETPOINT) / 100.0

    @temp_setpoint.setter
    def temp_setpoint(self, value: float) -> None:
        _log("temp_setpoint=", value)
        temp = int(value * 100.0)
        low = self.get_param(const.PARAM_TEMP_SETPOINT, const.ATTR_MIN)
        high = self.get_param(const.PARAM_TEMP_SETPOINT, const.ATTR_MAX)
        if not low <= temp <= high:
            raise ValueError(
                f"Invalid temp {value} : Valid temps are in the range {low / 100.0} - "
                f"{high / 100.0}."
            )
        self.set_param(const.PARAM_TEMP_SETPOINT, temp)
