"""How outbox-v1.db was made: the first data plane (one CloudEvent per reading, schemaversion 1).

Run at commit 00c64bd (the last one before frames), from the repository root:
    python tests/cases/upgrade/make_v1_outbox.py tests/cases/upgrade/outbox-v1.db
It uses that commit's API (gateway.events.Reading), which frames replaced; kept so the
fixture can be told apart from a hand-made file. tests/test_upgrade.py drains it.
"""

import asyncio
import sys
from pathlib import Path

from gateway import events
from gateway.config import StoreSection
from gateway.events import Reading  # type: ignore[attr-defined]  # the API of 00c64bd
from gateway.store import Outbox


async def main(path: Path) -> None:
    outbox = Outbox(path, StoreSection(), source_prefix="/plant-a/line-1")
    await outbox.open()
    t0 = 1_790_000_000.0
    evs = []
    for i in range(100):
        evs.append(events.telemetry(Reading("press-1", "spindle_temp_c", 20 + i / 10, "degC",
                                            source_time=t0 + i)))
        evs.append(events.telemetry(Reading("mill-2", "vibration_rms", 0.5 + i / 1000, "mm/s",
                                            receive_time=t0 + i + 0.5)))
    evs.append(events.device_status("press-1", "online", "connected", at=t0))
    evs.append(events.maintenance_needed("press-1", {"asset": "press-1", "probability": 0.93},
                                         "inputs-1", at=t0 + 99))
    for start in range(0, len(evs), 100):
        await outbox.append(evs[start:start + 100])
    await outbox.close()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
