"""The local cluster's settings, kept in ``<state dir>/cluster.json`` so a restart finds them.

Secrets (the root token, the blob signing key) are made once, at the first ``cluster up``, and
the file is readable by its owner only: clients get the token from ``toil-arvados cluster env``.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import string
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_STATE_DIR = Path(os.environ.get("TOIL_ARVADOS_CLUSTER_DIR", "~/.local/share/toil-arvados/cluster")).expanduser()



def registry_path() -> Path:
    """The list of this user's cluster state directories (``TOIL_ARVADOS_CLUSTER_REGISTRY``
    overrides it): how a command finds the cluster ``ARVADOS_API_HOST`` names."""
    default = Path("~/.local/share/toil-arvados/clusters.json").expanduser()
    return Path(os.environ.get("TOIL_ARVADOS_CLUSTER_REGISTRY") or default)


_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str | int) -> int:
    """``"4G"``, ``"512M"``, ``"1073741824"`` -> bytes (binary units, as Arvados' ram constraint)."""
    if isinstance(text, int):
        return text
    s = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = s[-1] if s and s[-1] in _SIZE_UNITS else ""
    number = s[: len(s) - len(unit)] if unit else s
    try:
        return int(float(number) * _SIZE_UNITS[unit])
    except ValueError:
        raise ValueError(f"invalid size {text!r}: use a number of bytes or a suffix K, M, G, T (e.g. 8G)") from None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _secret(n: int = 50) -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(n))


def _existing(path: Path) -> Path:
    """*path*, or its nearest existing parent."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def disk_scratch(state_dir: Path) -> int:
    """Bytes of scratch the one local instance type has: the size of the filesystem holding
    the containers' scratch images (``<state dir>/containers``, see scratch.py), as Arvados'
    single-host install sizes its instance from its temp filesystem. Its size, not its free
    space: the same request must fit the same way on a fuller disk (scratch images are sparse;
    a container that really fills the disk fails as it would on a full compute node)."""
    return shutil.disk_usage(_existing(Path(state_dir) / "containers")).total


#: The InstanceType fields Arvados computes and never exports (``json:"-"`` in
#: sdk/go/arvados/config.go): readers get Name from the map key and Scratch as
#: IncludedScratch + AddedScratch.
NOT_EXPORTED_INSTANCE_FIELDS = ("Name", "Scratch")


def exported_instance_types(types: dict[str, dict]) -> dict[str, dict]:
    """``InstanceTypes`` as ``GET /arvados/v1/config`` shows them (pure)."""
    return {name: {k: v for k, v in t.items() if k not in NOT_EXPORTED_INSTANCE_FIELDS}
            for name, t in types.items()}


#: config.default.yml's Containers.ReserveExtraRAM (550MiB): RAM dispatch-cloud adds to every
#: container's request when choosing an instance type.
DEFAULT_RESERVE_EXTRA_RAM = 550 << 20


def _total_ram() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@dataclass
class ClusterConfig:
    """Everything the cluster processes and its clients need to agree on."""

    state_dir: str
    cluster_id: str = "local"
    host: str = "127.0.0.1"
    api_port: int = 0
    keep_port: int = 0
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)
    ram: int = field(default_factory=_total_ram)
    root_token_secret: str = field(default_factory=_secret)
    root_token_uuid_tail: str = field(default_factory=lambda: _secret(15))
    blob_signing_key: str = field(default_factory=lambda: _secret(64))
    blob_signature_ttl: int = 14 * 24 * 3600
    container_count_max: int = 3
    #: Containers.ReserveExtraRAM, bytes (see dispatcher fitting).
    reserve_extra_ram: int = DEFAULT_RESERVE_EXTRA_RAM
    #: IncludedScratch of the instance, bytes; containers needing more are unsatisfiable.
    #: 0: the size of the disk under the state dir (:func:`disk_scratch`), measured when asked.
    scratch: int = 0
    #: Also offer a preemptible variant of the instance type (Arvados refuses preemptible
    #: requests when InstanceTypes has none).
    preemptible_instances: bool = False
    #: Docker engine for containers with real images (``unix:///path``); None: ``DOCKER_HOST``
    #: of the cluster process, else Docker's default socket (see runtime/selection.py).
    docker_host: str | None = None
    #: Keep storage classes the cluster declares (config StorageClasses); the first is the
    #: default one. Keep stores every block alike: the classes are recorded, not acted on.
    storage_classes: list[str] = field(default_factory=lambda: ["default"])

    def instance_types(self) -> dict[str, dict]:
        """The cluster config's InstanceTypes as Arvados holds them (with the computed Name and
        Scratch = IncludedScratch + AddedScratch; :func:`exported_instance_types` for clients):
        this machine, as much of it as the cluster was given, its scratch what the dispatcher can
        really offer, and (``preemptible_instances``) the same again marked Preemptible."""
        scratch = self.scratch or disk_scratch(self.state_path)
        base = {"ProviderType": "local", "VCPUs": self.cores, "RAM": self.ram, "Scratch": scratch,
                "IncludedScratch": scratch, "AddedScratch": 0, "Price": 0, "Preemptible": False,
                "GPU": {"Stack": "", "DriverVersion": "", "HardwareTarget": "", "DeviceCount": 0, "VRAM": 0}}
        types = {"local": {"Name": "local", **base}}
        if self.preemptible_instances:
            types["local-preemptible"] = {**base, "Name": "local-preemptible", "Preemptible": True}
        return types

    def storage_class_config(self) -> dict[str, dict]:
        """The cluster config's StorageClasses."""
        return {name: {"Default": i == 0, "Priority": 0} for i, name in enumerate(self.storage_classes)}

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

    @property
    def config_file(self) -> Path:
        return self.state_path / "cluster.json"

    @property
    def root_token_uuid(self) -> str:
        return f"{self.cluster_id}-gj3su-{self.root_token_uuid_tail}"

    @property
    def root_token(self) -> str:
        return f"v2/{self.root_token_uuid}/{self.root_token_secret}"

    @property
    def system_user_uuid(self) -> str:
        return f"{self.cluster_id}-tpzed-000000000000000"

    @property
    def admin_user_uuid(self) -> str:
        return f"{self.cluster_id}-tpzed-{self.root_token_uuid_tail}"

    @property
    def api_host(self) -> str:
        """The value of ``ARVADOS_API_HOST`` (host:port, no scheme), as the SDK expects."""
        return f"{self.host}:{self.api_port}"

    def save(self) -> None:
        self.state_path.mkdir(parents=True, exist_ok=True)
        tmp = self.config_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self), f, indent=2)
            f.flush()
            os.fsync(f.fileno())  # the secrets and ports must survive a crash, as the data does
        os.replace(tmp, self.config_file)

    @classmethod
    def load(cls, state_dir: Path) -> "ClusterConfig":
        data = json.loads((Path(state_dir) / "cluster.json").read_text())
        data["state_dir"] = str(state_dir)
        return cls(**data)

    @classmethod
    def load_or_create(cls, state_dir: Path, **overrides: object) -> "ClusterConfig":
        """The saved settings, updated with the options given now (cores, ram, port)."""
        state_dir = Path(state_dir).resolve()
        if (state_dir / "cluster.json").exists():
            cfg = cls.load(state_dir)
        else:
            cfg = cls(state_dir=str(state_dir))
        for key, value in overrides.items():
            if value is not None:
                setattr(cfg, key, value)
        if not cfg.api_port:
            cfg.api_port = free_port(cfg.host)
        if not cfg.keep_port:
            cfg.keep_port = free_port(cfg.host)
        return cfg


def _registered() -> list[str]:
    try:
        dirs = json.loads(registry_path().read_text())
    except (OSError, ValueError):
        return []
    return [d for d in dirs if isinstance(d, str)] if isinstance(dirs, list) else []


def register(cfg: ClusterConfig) -> None:
    """Remember ``cfg``'s state directory (and forget ones that are gone), under a lock so
    concurrent ``up``s do not lose each other's entries."""
    import fcntl

    path = registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        dirs = [d for d in _registered() if d != cfg.state_dir and (Path(d) / "cluster.json").exists()]
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(dirs + [cfg.state_dir], indent=1))
        os.replace(tmp, path)


def find_state_dir(api_host: str) -> Path | None:
    """The state directory of the cluster whose recorded address is ``api_host`` (host:port);
    the default state directory is looked at too, registered or not. Two stopped clusters may
    have recorded the same port: a running one wins, then the one started last."""
    from .statelock import holder

    matches = []
    for d in [*reversed(_registered()), str(DEFAULT_STATE_DIR)]:
        try:
            if ClusterConfig.load(Path(d)).api_host == api_host:
                matches.append(Path(d))
        except (OSError, ValueError, TypeError):
            continue
    running = [d for d in matches if holder(d) is not None]
    return (running or matches or [None])[0]
