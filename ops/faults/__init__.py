"""``make faults``: a bounded fault-injection campaign against the whole loop, on real data, on a
PRIVATE local stack (its own Kafka, registry and PostgreSQL on other ports, in a temporary folder).

    python -m ops.faults --size reduced     # CI size: about 11 faults, a few minutes
    python -m ops.faults --size full        # make faults: about 30 faults
    python -m ops.faults --size reduced --stack-dir /tmp/st --keep-stack   # reuse a private stack

What it does:

1. starts a private stack (deploy/local/stack.sh with REFTRAIN_STACK_DIR and REFTRAIN_*_PORT set):
   the broker and the registry are stopped during the campaign, so it must never be the shared
   stack other people's tests use;
2. starts pivots, inference, coordinator and a trainer as processes (ops.procs), and replays real
   Binance 1m candles (data/) through ingest in consecutive paced chunks, each chunk one ingest
   process, so the loop is under steady load the whole time;
3. acts as the process supervisor an orchestrator would be: a service that exits is restarted
   (at once after an injected kill; with back-off after an unplanned exit, which is counted);
4. injects, one at a time, at random moments: kill -9 of every service (several times at full size),
   kill -9 of the trainer INSIDE a checkpoint (TRAINER_FAILPOINT, each stage of the protocol) and
   during a rebalance, broker stop/restart, schema registry stop/restart (with a service restart
   while it is down), the store's catalog database refusing connections, a trainer replica added
   and removed; plus a few bad messages (candles, training jobs) that must end up dead-lettered;
5. after each fault, measures the recovery time: from the end of the fault (process restarted,
   component back) until every service is ready again and the affected consumer groups committed
   new progress;
6. drains, stops the services gracefully, and checks, from the topics (read_committed) and the
   trainer's checkpoint lineage:
   - training jobs == offline oracle ``batch_join`` of the candles, pivots and refs on the topics:
     lost, duplicated, extra; per fault, a job counts where the join became possible (the later of
     its ref and its resolving candle/pivot) inside the fault's window;
   - trained twice (a job id twice in a surviving lineage) and not trained (a job neither in a
     lineage nor dead-lettered by the trainer);
   - upstream: every replayed candle once on ``candles``, pivots == batch detector, one ref per
     candle with a full window;
   - every injected bad message dead-lettered by each of its consumers; no service in a crash loop.

Exit status: 0 every check passed; 1 a check failed; 2 the campaign could not run.

The package, one concern a module: ``config`` (sizes, service settings), ``stack`` (the private
stack, chattr for the data-path fault), ``supervisor`` (restarts, back-off, liveness probe),
``injectors`` (the faults and the recovery measurement), ``campaign`` (set-up, replay, schedule,
drain), ``results`` (what is recorded), ``verdict`` (the checks, on top of ops.analysis),
``tables`` (markdown and terminal tables), ``__main__`` (the CLI). Catalog outages use ops.catalog.
"""

from __future__ import annotations

from ops.faults.campaign import Campaign, Options, run_campaign
from ops.faults.config import SIZES, Size
from ops.faults.stack import CampaignError, PrivateStack
from ops.faults.tables import markdown, render
from ops.faults.verdict import Injection, Result, Row, analyse

__all__ = ["SIZES", "Campaign", "CampaignError", "Injection", "Options", "PrivateStack", "Result", "Row", "Size",
           "analyse", "markdown", "render", "run_campaign"]
