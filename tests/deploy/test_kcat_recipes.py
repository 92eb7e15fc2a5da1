"""The kcat recipes of docs/compose.md, run against the local broker and registry.

Each host recipe (a line starting with `kcat ` in a ```sh block) is run with localhost:9092 rewritten
to the local broker, the registry URL to the local registry and topic names to this test's prefixed
topics; a following recipe (`-o end`) is read from the beginning and stops at the end (`-e`) so it
terminates. The Avro recipe needs a kcat built with Avro support (Debian's is not): it is skipped
with that reason where the local kcat lacks it.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from typing import Any

import pytest

from reftrain.schemas import content_type
from reftrain.settings import PlatformSettings
from reftrain.topics import CANDLES, RECORD_OF_TOPIC, TopicCatalogue
from tests.deploy import deployfiles as df
from tests.support import ensure_topics, produce_records, real_candles

pytestmark = pytest.mark.kafka

DOC = df.REPO / "docs" / "compose.md"
COMPOSE_HOST_REGISTRY = "http://localhost:8081/apis/ccompat/v7"


def recipes() -> list[str]:
    """Host kcat command lines of docs/compose.md, continuation lines joined."""
    out = []
    for block in re.findall(r"```sh\n(.*?)```", DOC.read_text(), re.S):
        for cmd in block.replace("\\\n", " ").splitlines():
            cmd = cmd.strip()
            if cmd.startswith("kcat "):
                out.append(cmd)
    return out


def kcat_features() -> str:
    kcat = df.tool("kcat")
    if kcat is None:
        pytest.skip("kcat is not installed (apt-get install -y kcat; deploy/local/stack.sh installs it)")
    return df.run([kcat, "-V"]).stdout


def localise(cmd: str, platform: PlatformSettings) -> list[str]:
    argv = shlex.split(cmd)
    cat = TopicCatalogue(platform)
    physical = {logical: cat.name(logical) for logical in RECORD_OF_TOPIC}
    physical.update({f"{logical}.dlq": cat.dlq(logical) for logical in RECORD_OF_TOPIC})
    out = []
    for i, arg in enumerate(argv):
        prev = argv[i - 1] if i else ""
        if arg == "localhost:9092":
            arg = platform.kafka_bootstrap_servers
        elif arg == COMPOSE_HOST_REGISTRY:
            arg = platform.schema_registry_url
        elif prev == "-t":
            assert arg in physical, f"recipe names an unknown topic {arg!r}"
            arg = physical[arg]
        elif prev == "-o" and arg == "end":
            arg = "beginning"
        out.append(arg)
    if "-C" in out and "-e" not in out:
        out.append("-e")
    return out


def test_recipes_exist() -> None:
    cmds = recipes()
    assert any(" -L" in c for c in cmds)
    assert any("%k" in c and "%h" in c and "-t candles" in c for c in cmds)
    assert any("-s value=avro" in c and "-r " in c for c in cmds)
    assert "kafka-consumer-groups.sh" in DOC.read_text()


def test_kcat_recipes_against_the_local_broker(platform: PlatformSettings) -> None:
    features = kcat_features()
    ensure_topics(platform)
    candles = real_candles("BTCUSDT-1m-2025-10-29_2025-11-01.csv", limit=3)
    records: list[tuple[str, dict[str, Any]]] = [(f"{c['symbol']}:{c['timeframe']}", dict(c)) for c in candles]
    produce_records(platform, CANDLES, records)
    cat = TopicCatalogue(platform)
    ran = 0
    for cmd in recipes():
        avro = "-s value=avro" in cmd
        if avro and "avro" not in features.lower():
            continue
        argv = localise(cmd, platform)
        res = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, (cmd, res.stderr)
        ran += 1
        if " -L" in cmd:
            assert f'topic "{cat.name(CANDLES)}" with 6 partitions' in res.stdout
        elif "-t candles" in cmd:
            lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
            assert len(lines) == 3, res.stdout
            for line in lines:
                assert "BTCUSDT:1m" in line
                if "%h" in cmd:
                    assert f"content-type={content_type('reftrain.Candle')}" in line
                if avro:
                    assert '"open_time"' in line
        elif ".dlq" in cmd:
            assert res.stdout.strip() == ""  # nothing dead-lettered here
    assert ran >= 4


def test_avro_recipe_needs_an_avro_enabled_kcat(platform: PlatformSettings) -> None:
    if "avro" not in kcat_features().lower():
        pytest.skip("the local kcat has no Avro support (Debian's build); the recipe is for the edenhill/kcat "
                    "image (`docker compose run --rm kcat`) or an Avro-enabled build")
    # when it has, test_kcat_recipes_against_the_local_broker ran the Avro recipe too
