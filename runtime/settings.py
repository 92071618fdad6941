"""The runtime agent's settings: one typed object, read once by from_env().

Standalone (compose: `python -m runtime`), the agent reads its own
environment, and --socket/--store/--run-dir/--data-dir/--workdir override.
Embedded, the api builds this object from *its* settings and hands it over
explicitly as one JSON argument (`--settings`, to_json/from_json): the agent
then reads no environment at all, so what it runs with is what the api
decided, not whatever the api's environment happened to hold. Nothing secret
is in it: CWEB_RUNTIME_SECRET is only for the standalone agent's socket and
never serialized.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from runtime.limits import WorkerLimits
from runtime.services import ServicesSettings


@dataclass
class AgentSettings:
    socket: str = "/run/cweb/agent.sock"
    store_dir: str = "./data/store"
    run_dir: str = "/run/cweb"
    data_dir: str = "./data"
    workdir: str = ""
    log_json: bool = False
    workers: WorkerLimits = field(default_factory=WorkerLimits)
    services: ServicesSettings = field(default_factory=ServicesSettings)
    # CWEB_RUNTIME_SECRET: the standalone socket's shared secret ("" = make one).
    secret: str = field(default="", repr=False)
    # Artifacts load only with a builder's valid signature (runtime/provenance.py);
    # CWEB_REQUIRE_SIGNED_ARTIFACTS=0 turns that off (stores from before signing).
    require_signed: bool = True
    # CWEB_TRUSTED_BUILDER_KEYS: base64 Ed25519 public keys, comma-separated;
    # empty = the keys builders registered in the store.
    trusted_builder_keys: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AgentSettings:
        env = dict(os.environ if env is None else env)
        return cls(
            socket=env.get("CWEB_RUNTIME_SOCKET", "/run/cweb/agent.sock"),
            store_dir=env.get("CWEB_STORE_DIR", "./data/store"),
            run_dir=env.get("CWEB_RUN_DIR", "/run/cweb"),
            data_dir=env.get("CWEB_DATA_DIR", "./data"),
            workdir=env.get("CWEB_WORKDIR", "") or os.getcwd(),
            log_json=env.get("CWEB_LOG_JSON", "") == "1",
            workers=WorkerLimits.from_env(env),
            services=ServicesSettings.from_env(env),
            secret=env.get("CWEB_RUNTIME_SECRET", ""),
            require_signed=env.get("CWEB_REQUIRE_SIGNED_ARTIFACTS", "1") != "0",
            trusted_builder_keys=env.get("CWEB_TRUSTED_BUILDER_KEYS", ""),
        )

    def to_json(self) -> str:
        """Everything but the secret, for the embedded agent's argv."""
        plain = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "secret"}
        plain["workers"] = _fields(self.workers)
        plain["services"] = _fields(self.services)
        return json.dumps(plain, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> AgentSettings:
        plain = json.loads(text)
        plain["workers"] = WorkerLimits(**plain["workers"])
        plain["services"] = ServicesSettings(**plain["services"])
        return cls(**plain)


def _fields(obj: object) -> dict:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}  # type: ignore[arg-type]
