"""Wait until the local stack answers real requests (not just TCP): Kafka metadata through the
AdminClient, the registry's Confluent-compatible /subjects. Exits 0 when ready, 1 on timeout."""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.request

from confluent_kafka.admin import AdminClient


def kafka_ready(bootstrap: str) -> bool:
    # log_level 0: the broker is expected to refuse connections while it starts; no log spam.
    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 2000, "log_level": 0})
    try:
        md = admin.list_topics(timeout=3)
        return len(md.brokers) > 0
    except Exception:
        return False


def registry_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/subjects", timeout=3) as resp:
            return bool(resp.status == 200)
    except Exception:
        return False


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args()
    bootstrap = os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    registry = os.environ["SCHEMA_REGISTRY_URL"]
    deadline = time.monotonic() + args.timeout
    state = {"kafka": False, "registry": False}
    while time.monotonic() < deadline:
        state["kafka"] = state["kafka"] or kafka_ready(bootstrap)
        state["registry"] = state["registry"] or registry_ready(registry)
        if all(state.values()):
            print(f"[stack] kafka ready at {bootstrap}; registry ready at {registry}", file=sys.stderr)
            return 0
        time.sleep(1)
    print(f"[stack] not ready after {args.timeout}s: {state}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
