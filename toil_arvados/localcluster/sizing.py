"""Which instance types can run a container, as dispatch-cloud decides it (pure functions).

Mirrors ``lib/dispatchcloud/container/node_size.go`` of Arvados: ``InstanceResourcesNeeded``
(RAM = ram + keep_cache_ram + ``Containers.ReserveExtraRAM``, then grossed up by 5% because
instances never have quite their nominal RAM; scratch = tmp mount capacities, at least the
image size, plus the image size again, plus keep_cache_disk) and ``ChooseInstanceType`` (enough
VCPUs, RAM, scratch, GPUs; the preemptible flag equal to the request's). A container no type
fits is cancelled with ``runtime_status.error`` = "constraints not satisfiable by any configured
instance type", as ``Queue.cancelUnsatisfiableContainer`` does. Clients can compute the same from
``configs.get`` (``InstanceTypes``, ``Containers.ReserveExtraRAM``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

#: node_size.go's discountConfiguredRAMPercent.
DISCOUNT_CONFIGURED_RAM_PERCENT = 5
UNSATISFIABLE = "constraints not satisfiable by any configured instance type"
_PDH = re.compile(r"^[0-9a-f]{32}\+(\d+)$")


@dataclass(frozen=True)
class Needed:
    """What one container takes from an instance, overhead included."""

    vcpus: int
    ram: int
    scratch: int
    gpus: int = 0
    gpu_vram: int = 0


def estimate_docker_image_size(pdh: str | None) -> int:
    """The disk an ``arv-keepdocker`` image needs, guessed from its manifest's size (the PDH's
    ``+N``): one ~42-byte locator per full 64 MiB block after an 80-byte file entry."""
    m = _PDH.match(pdh or "")
    if not m or int(m.group(1)) < 122:
        return 0
    return ((int(m.group(1)) - 80) // 42) * (64 << 20)


def estimate_scratch(container: Mapping[str, Any]) -> int:
    """Disk a container needs: its tmp mounts, the image (buffered then extracted), the disk cache."""
    need = sum(int(m.get("capacity") or 0) for m in (container.get("mounts") or {}).values()
               if isinstance(m, dict) and m.get("kind") == "tmp")
    image = estimate_docker_image_size(container.get("container_image"))
    need = max(need, image) + image
    return need + int((container.get("runtime_constraints") or {}).get("keep_cache_disk") or 0)


def resources_needed(container: Mapping[str, Any], reserve_extra_ram: int) -> Needed:
    """``InstanceResourcesNeeded`` (no dedicated per-container keepstore here)."""
    rc = container.get("runtime_constraints") or {}
    ram = int(rc.get("ram") or 0) + int(rc.get("keep_cache_ram") or 0) + reserve_extra_ram
    ram = ram * 100 // (100 - DISCOUNT_CONFIGURED_RAM_PERCENT)
    gpu = rc.get("gpu") or {}
    return Needed(vcpus=int(rc.get("vcpus") or 0), ram=ram, scratch=estimate_scratch(container),
                  gpus=int(gpu.get("device_count") or 0), gpu_vram=int(gpu.get("vram") or 0))


def _version_less(a: str, b: str) -> bool | None:
    """a < b as decimal numbers; None when either is not a number (Go's ParseFloat error)."""
    try:
        return float(a) < float(b)
    except (TypeError, ValueError):
        return None


def _gpu_fits(it_gpu: Mapping[str, Any], gpu: Mapping[str, Any]) -> bool:
    """The GPU part of ChooseInstanceType's rejection rules."""
    if (it_gpu.get("Stack") or "") != (gpu.get("stack") or ""):
        return False
    count = int(gpu.get("device_count") or 0)
    if int(it_gpu.get("DeviceCount") or 0) < count or int(it_gpu.get("VRAM") or 0) < int(gpu.get("vram") or 0):
        return False
    if count == 0:
        return True
    if _version_less(it_gpu.get("DriverVersion") or "", gpu.get("driver_version") or "") is not False:
        return False
    targets = list(gpu.get("hardware_target") or [])
    have = it_gpu.get("HardwareTarget") or ""
    if gpu.get("stack") == "cuda" and len(targets) == 1:
        return _version_less(have, targets[0]) is False
    return have in targets


def choose_instance_types(instance_types: Mapping[str, Mapping[str, Any]], container: Mapping[str, Any],
                          reserve_extra_ram: int) -> tuple[list[str], str | None]:
    """Names of the instance types that can run *container*, cheapest first; or ([], why)."""
    if not instance_types:
        return [], "site configuration does not list any instance types"
    rc = container.get("runtime_constraints") or {}
    gpu = rc.get("gpu") or {}
    if (gpu.get("stack") or "") not in ("", "cuda", "rocm"):
        return [], f"Invalid GPU stack {gpu.get('stack')!r}, expected to be blank or one of 'cuda' or 'rocm'"
    need = resources_needed(container, reserve_extra_ram)
    preemptible = bool((container.get("scheduling_parameters") or {}).get("preemptible"))
    fits = [(float(it.get("Price") or 0), -int(it.get("RAM") or 0), name) for name, it in instance_types.items()
            if int(it.get("Scratch") or 0) >= need.scratch and int(it.get("RAM") or 0) >= need.ram
            and int(it.get("VCPUs") or 0) >= need.vcpus and bool(it.get("Preemptible")) == preemptible
            and _gpu_fits(it.get("GPU") or {}, gpu)]
    if not fits:
        return [], UNSATISFIABLE
    return [name for _, _, name in sorted(fits)], None


def unsatisfiable_log(container_uuid: str, why: str, instance_types: Mapping[str, Mapping[str, Any]]) -> str:
    """The text sdk/go/dispatch logs for an unsatisfiable container: the reason, then every type."""
    lines = [f"cannot run container {container_uuid}: {why}"]
    if not instance_types:
        lines.append("No instance types are configured.")
    else:
        lines.append("Available instance types:")
        for name, t in sorted(instance_types.items(), key=lambda kv: float(kv[1].get("Price") or 0)):
            lines.append(f"Type {name!r}: {t.get('VCPUs')} VCPUs, {t.get('RAM')} RAM, {t.get('Scratch')} Scratch, "
                         f"{float(t.get('Price') or 0):f} Price")
    return "\n".join(lines) + "\n"
