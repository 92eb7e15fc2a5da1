"""The settings models (reftrain.settings on pydantic-settings, one per service): a bad value stops
start-up with a message that names the variable and the allowed range; secrets come from ``*_FILE``
through one reader; every variable the docs and deployment files mention is a field of a model, so
the move to pydantic renamed nothing; constructing a model directly reads no environment."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from reftrain import settings
from reftrain.errors import ConfigError
from reftrain.settings import PlatformSettings, Settings
from services import catalog
from services.coordinator.settings import CoordinatorSettings
from services.inference.settings import InferenceSettings
from services.ingest.limits import IngestLimits
from services.ingest.settings import IngestSettings
from services.pivots.settings import PivotSettings
from services.trainer.settings import TrainerSettings
from tests.deploy import deployfiles

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("cls, env, message", [
    (CoordinatorSettings, {"COORDINATOR_ALIGN_MAX_WAIT_MS": "-1"},
     "COORDINATOR_ALIGN_MAX_WAIT_MS must be >= 0, got -1"),
    (CoordinatorSettings, {"COORDINATOR_BATCH_SIZE": "0"}, "COORDINATOR_BATCH_SIZE must be >= 1, got 0"),
    (CoordinatorSettings, {"COORDINATOR_PIVOT_WINDOW_MS_BY_TIMEFRAME": "1h=-5"},
     "COORDINATOR_PIVOT_WINDOW_MS_BY_TIMEFRAME[1h] must be >= 0, got -5"),
    (CoordinatorSettings, {"COORDINATOR_MAX_LAG_BARS_BY_TIMEFRAME": "2m=5"},
     "COORDINATOR_MAX_LAG_BARS_BY_TIMEFRAME="),
    (InferenceSettings, {"INFERENCE_HORIZON": "0"}, "INFERENCE_HORIZON must be >= 1, got 0"),
    (InferenceSettings, {"INFERENCE_WINDOW": "1"}, "INFERENCE_WINDOW must be >= 2, got 1"),
    (InferenceSettings, {"INFERENCE_WINDOW": "many"}, "INFERENCE_WINDOW='many': Input should be a valid integer"),
    (InferenceSettings, {"INFERENCE_SERIES": "BTCUSDT:2m"}, "INFERENCE_SERIES="),
    (IngestSettings, {"INGEST_BATCH": "0"}, "INGEST_BATCH must be >= 1, got 0"),
    (IngestSettings, {"INGEST_SMA": "20,0"}, "INGEST_SMA[1] must be >= 1, got 0"),
    (IngestSettings, {"INGEST_PROGRESS": "maybe"}, "INGEST_PROGRESS='maybe': use auto, on or off"),
    (IngestLimits, {"INGEST_MAX_SERIES": "0"}, "INGEST_MAX_SERIES must be >= 1, got 0"),
    (PivotSettings, {"PIVOTS_BATCH_SIZE": "-3"}, "PIVOTS_BATCH_SIZE must be >= 1, got -3"),
    (PivotSettings, {"PIVOTS_STRENGTHS": "2,0"}, "PIVOTS_STRENGTHS="),
    (TrainerSettings, {"TRAINER_LR": "0"}, "TRAINER_LR must be > 0, got 0"),
    (TrainerSettings, {"TRAINER_CHECKPOINT_SECONDS": "-1"}, "TRAINER_CHECKPOINT_SECONDS must be >= 0, got -1"),
    (TrainerSettings, {"TRAINER_AMP": "perhaps"}, "TRAINER_AMP='perhaps': Input should be a valid boolean"),
    (TrainerSettings, {"TRAINER_FAILPOINT": "nowhere:1"}, "TRAINER_FAILPOINT must be '<stage>:<n>'"),
    (PlatformSettings, {"TOPIC_PARTITIONS": "0"}, "TOPIC_PARTITIONS must be >= 1, got 0"),
    (PlatformSettings, {"HTTP_PORT": "70000"}, "HTTP_PORT must be <= 65535, got 70000"),
])
def test_a_bad_value_names_the_variable_and_the_range(cls: type[Settings], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        cls.from_env(env)
    assert str(exc.value).startswith(message), str(exc.value)
    assert exc.value.__cause__ is None  # pydantic's error (it repeats the input) is not chained


def test_every_service_model_refuses_a_bad_value_of_each_ranged_field() -> None:
    """Every field with a lower bound, in every service's model, refuses a value below it by name."""
    checked = 0
    for spec in catalog.SPECS:
        cls = spec.settings_class
        for name, field in cls.model_fields.items():
            bound = next((m for m in field.metadata if hasattr(m, "ge") or hasattr(m, "gt")), None)
            if bound is None:
                continue
            low = getattr(bound, "ge", None)
            low = getattr(bound, "gt", None) if low is None else low - 1
            env = {cls.env_name(name): str(low), "INGEST_FILES": "x.csv"}
            with pytest.raises(ConfigError, match=rf"^{cls.env_name(name)} must be >=? "):
                cls.from_env(env)
            checked += 1
    assert checked >= 20


def test_values_keep_their_formats_and_empty_optional_is_unset() -> None:
    c = CoordinatorSettings.from_env({"COORDINATOR_PIVOT_WINDOW_MS": "1000",
                                      "COORDINATOR_PIVOT_WINDOW_MS_BY_TIMEFRAME": "1h=1800000, 4h=7200000"})
    assert c.pivot_window_ms_by_timeframe == {"1h": 1_800_000, "4h": 7_200_000}
    assert c.join_config().pivot_window_ms["1m"] == 1000
    assert PivotSettings.from_env({"PIVOTS_STRENGTHS": "3, 2,1"}).strengths == (3, 2, 1)
    assert IngestSettings.from_env({"INGEST_DERIVE": ""}).derive == ()
    assert TrainerSettings.from_env({"TRAINER_AMP": "off", "TRAINER_STRICT_DETERMINISM": "1"}).amp is False
    assert PlatformSettings.from_env({"HTTP_PORT": ""}).http_port is None
    assert PlatformSettings.from_env({"HTTP_PORT": "0"}).http_port == 0
    # the upper-case names only, as always (a lower-case variable is somebody else's)
    assert TrainerSettings.from_env({"trainer_batch": "7"}).batch == 32


def test_construction_reads_no_environment_and_replace_validates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COORDINATOR_BATCH_SIZE", "7")
    monkeypatch.setenv("TOPIC_PREFIX", "from-env-")
    assert CoordinatorSettings().batch_size == 500
    assert CoordinatorSettings.from_env().batch_size == 7
    assert PlatformSettings().topic_prefix == "" and settings.platform().topic_prefix == "from-env-"
    s = TrainerSettings(batch=8)
    assert s.replace(lr=0.5).lr == 0.5 and s.replace(lr=0.5).batch == 8
    with pytest.raises(ConfigError, match="TRAINER_BATCH must be >= 1, got 0"):
        s.replace(batch=0)
    assert TrainerSettings(**s.as_dict()) == s and hash(TrainerSettings(**s.as_dict())) == hash(s)
    with pytest.raises(ConfigError, match="TRAINER_NO_SUCH_THING"):
        TrainerSettings(no_such_thing=1)  # type: ignore[call-arg]  # an unknown field is refused


def test_secrets_come_from_their_file_through_one_reader(tmp_path: Path) -> None:
    for name in ("schema_registry_basic_auth", "schema_registry_token", "store_s3_secret_access_key",
                 "store_catalog_password"):
        f = tmp_path / name
        f.write_text(f"{name}-v@lue\n")
        env = {f"{name.upper()}_FILE": str(f)}
        assert settings.secret(PlatformSettings.from_env(env), name) == f"{name}-v@lue"  # newline stripped
        with pytest.raises(ConfigError, match=rf"^{name.upper()}_FILE '.*missing' cannot be read"):
            settings.secret(PlatformSettings.from_env({f"{name.upper()}_FILE": str(tmp_path / "missing")}), name)
    # the variable itself wins over its file; nothing set is ''
    both = PlatformSettings.from_env({"SCHEMA_REGISTRY_TOKEN": "direct",
                                      "SCHEMA_REGISTRY_TOKEN_FILE": str(tmp_path / "missing")})
    assert settings.secret(both, "schema_registry_token") == "direct"
    assert settings.secret(PlatformSettings(), "schema_registry_token") == ""
    assert settings.catalog_password(PlatformSettings()) is None
    assert "direct" not in repr(both) and "direct" not in str(both.public())


#: Upper-case words in the docs that look like variables but are not (a topic constant).
NOT_VARIABLES = {"INFERENCE_REFS", "TOPIC_ALREADY_EXISTS"}  # a topic constant; a Kafka error code
PREFIXES = ("COORDINATOR_", "INFERENCE_", "INGEST_", "PIVOTS_", "TRAINER_", "INIT_", "STORE_",
            "SCHEMA_REGISTRY_", "TOPIC_", "HTTP_", "LOG_", "INSTANCE_")


def documented_variables() -> dict[str, set[str]]:
    """Variables named in the README, docs, service READMEs, compose files, k8s manifests, the local
    stack, the Dockerfile and the Makefile, with the files that name them."""
    files = [REPO / "README.md", REPO / "docker-compose.yml", REPO / "Makefile",
             *REPO.glob("docs/**/*.md"), *REPO.glob("services/*/README.md"),
             *(p for p in (REPO / "deploy").rglob("*") if p.is_file()
               and (p.suffix in {".md", ".yml", ".yaml", ".sh", ".env", ".properties"} or p.name == "Dockerfile"))]
    word = re.compile(rf"\b(?:{'|'.join(PREFIXES)})[A-Z0-9_]*[A-Z0-9]\b")
    found: dict[str, set[str]] = {}
    for f in files:
        for name in word.findall(f.read_text(errors="replace")):
            found.setdefault(name, set()).add(str(f.relative_to(REPO)))
    return found


def test_every_documented_variable_is_a_settings_field() -> None:
    models: list[type[Settings]] = [PlatformSettings, IngestLimits, deployfiles.init_settings_class(),
                                    *(s.settings_class for s in catalog.SPECS)]
    known = {name for cls in models for name in cls.env_names()}
    found = documented_variables()
    assert len(found) > 50  # the scan reads the files it should
    unknown = {name: sorted(where) for name, where in found.items() if name not in known | NOT_VARIABLES}
    assert not unknown, unknown
    # and the main ones keep their names
    assert {"KAFKA_BOOTSTRAP_SERVERS", "STORE_CATALOG", "COORDINATOR_ALIGN_MAX_WAIT_MS", "TRAINER_FAILPOINT",
            "INGEST_FILES", "PIVOTS_STRENGTHS", "INFERENCE_WINDOW", "INIT_COMPATIBILITY"} <= known


def test_the_generic_loader_refuses_a_prefix_that_is_not_the_models() -> None:
    assert settings.load(TrainerSettings, "TRAINER_", {"TRAINER_BATCH": "4"}).batch == 4
    with pytest.raises(ConfigError, match="reads TRAINER_"):
        settings.load(TrainerSettings, "PIVOTS_", {})


def test_connection_env_reads_back_as_the_same_connection() -> None:
    """What ops.run and the tests hand a service subprocess names the same infrastructure."""
    p = settings.platform({"KAFKA_BOOTSTRAP_SERVERS": "h:1", "SCHEMA_REGISTRY_URL": "http://r:2",
                           "STORE_CATALOG": "postgres:dbname=x host=h user=u", "STORE_CATALOG_PASSWORD_FILE": "/pw",
                           "STORE_DATA_PATH": "/lake", "TOPIC_PREFIX": "run-", "TOPIC_PARTITIONS": "3"})
    back = settings.platform(p.connection_env())
    names = ("kafka_bootstrap_servers", "schema_registry_url", "store_catalog", "store_catalog_password_file",
             "store_data_path", "topic_prefix", "topic_partitions")
    assert {n: getattr(back, n) for n in names} == {n: getattr(p, n) for n in names}
    assert back.topic_partitions == 3 and back.store_catalog_password_file == "/pw"
