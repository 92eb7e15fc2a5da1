"""What a campaign does: its sizes (data, faults) and the service settings it runs them with."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ops.run import DEFAULT_FILES
from ops.stages import BY_NAME, REPO
from reftrain.topics import CANDLES, TRAINING_JOBS

DATA = REPO / "data"
CONSUMERS = ("pivots", "inference", "coordinator", "trainer")
#: Consumer group inputs (logical topics) of each consumer stage, for progress and lag.
INPUTS: dict[str, tuple[str, ...]] = {s: BY_NAME[s].inputs for s in CONSUMERS}
#: Which consumers dead-letter a bad message of each topic (their DLQ entries are counted).
CONSUMERS_OF: dict[str, tuple[str, ...]] = {CANDLES: ("pivots", "inference", "coordinator"),
                                            TRAINING_JOBS: ("trainer",)}


#: The liveness probe of deploy/k8s (GET /healthz every 15 s, restart after 4 failures), emulated by
#: the campaign's supervisor: a service whose main loop is stuck is restarted as Kubernetes would.
LIVENESS_PERIOD_S = 15.0
LIVENESS_FAILURES = 4
#: Startup: failures count only once /healthz answered, or after this long (k8s startupProbe).
STARTUP_GRACE_S = 300.0


# -- sizes ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Size:
    """How much data and how many faults. ``chunk`` candles per series per ingest process, paced at
    ``speed`` times real time (1m bars: speed 120 = 2 candles per second per series)."""

    name: str
    files: tuple[str, ...]
    window: int
    chunk: int
    speed: float
    max_candles: int
    kills_per_service: int
    failpoints: tuple[str, ...]
    #: (stream service, reftrain.streams failpoint stage): a kill -9 inside a transaction commit
    commit_kills: tuple[tuple[str, str], ...]
    rebalance_kills: int
    broker_stops: tuple[str, ...]  # signal used to stop the broker, one entry per stop
    broker_down_s: float
    registry_stops: int
    registry_down_s: float
    store_outages: int
    store_down_s: float
    data_path_outages: int  # the store's data path made read-only (chattr +i)
    scale_events: int
    bad_every: int  # a bad candle and a bad training job before every n-th fault
    settle_s: tuple[float, float] = (1.0, 4.0)
    recovery_timeout_s: float = 240.0
    # -- past one machine (issue #19): run only on a private stack with --brokers 3 / --lake s3 --
    #: logical topics whose busiest partition's LEADER broker is killed -9 (then restarted)
    leader_kills: tuple[str, ...] = ()
    #: rolling restarts of all brokers (SIGTERM one, start it, wait for full ISR, next)
    rolling_restarts: int = 0
    #: S3Proxy stopped for ``object_store_down_s`` (the lake, checkpoints and manifests unreachable)
    object_store_outages: int = 0
    object_store_down_s: float = 20.0


SIZES: dict[str, Size] = {
    "reduced": Size("reduced", DEFAULT_FILES, window=60, chunk=20, speed=120.0, max_candles=1500,
                    kills_per_service=1, failpoints=("after_fence",),
                    commit_kills=(("coordinator", "before_commit"),), rebalance_kills=1, broker_stops=("TERM",),
                    broker_down_s=8.0, registry_stops=1, registry_down_s=8.0, store_outages=1, store_down_s=10.0,
                    data_path_outages=1, scale_events=1, bad_every=3, leader_kills=(TRAINING_JOBS, CANDLES),
                    rolling_restarts=1, object_store_outages=1, object_store_down_s=20.0),
    "full": Size("full", DEFAULT_FILES, window=600, chunk=60, speed=240.0, max_candles=4300,
                 kills_per_service=3,
                 failpoints=("after_model_files", "after_fence", "after_manifest", "after_rows", "after_publish"),
                 commit_kills=(("coordinator", "before_commit"), ("coordinator", "after_commit"),
                               ("pivots", "before_commit"), ("inference", "before_commit")),
                 rebalance_kills=2, broker_stops=("TERM", "KILL"), broker_down_s=15.0, registry_stops=2,
                 registry_down_s=15.0, store_outages=2, store_down_s=20.0, data_path_outages=2, scale_events=2,
                 bad_every=2, leader_kills=(TRAINING_JOBS, CANDLES, TRAINING_JOBS, CANDLES), rolling_restarts=1,
                 object_store_outages=2, object_store_down_s=20.0),
}

def scaling_only(size: Size) -> Size:
    """``size``'s data with only the issue #19 faults (leader kills, rolling restart, object store
    outage): ``--only-scaling``, a campaign of the 3-broker + S3 stack that fits ~15 min here."""
    return replace(size, name=f"{size.name}-scaling", kills_per_service=0, failpoints=(), commit_kills=(),
                   rebalance_kills=0, broker_stops=(), registry_stops=0, store_outages=0, data_path_outages=0,
                   scale_events=0)


#: Service settings of the campaign (besides INFERENCE_WINDOW), and why.
CAMPAIGN_ENV: dict[str, str] = {
    "INGEST_DERIVE": "",  # 1m only: less load on a 2-core box, the same code paths
    "INGEST_PROGRESS": "off",
    "INGEST_EXIT_WHEN_DONE": "true",
    "TRAINER_CHECKPOINT_JOBS": "128",  # checkpoints often, so kills land in and around them
    "TRAINER_CHECKPOINT_SECONDS": "5",
    "TRAINER_TORCH_THREADS": "1",
    "INFERENCE_TORCH_THREADS": "1",
}

