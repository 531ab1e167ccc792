"""Sparkplug B (Eclipse Sparkplug 3.0) for Millwright: the edge node's pure layer.

The outbox keeps CloudEvents under every cloud format; with `cloud.format = "sparkplug_b"`
the uplink translates each stored event into Sparkplug messages when it sends it.

| module | does |
|---|---|
| `sparkplug_b.proto`, `_pb2` | the payload schema (from the spec) and its generated code |
| `names` | topics, id checks, the primary host's STATE |
| `node` | bdSeq (persisted), seq, aliases, which devices are born |
| `datatypes` | point types -> Sparkplug datatypes, values in and out of metrics |
| `payloads` | messages, metrics, properties, times, the node's own metrics |
| `maintenance` | maintenance_needed as metrics, and back |
| `translate` | stored events -> NBIRTH/NDEATH/DBIRTH/DDEATH/DDATA/NDATA |
| `decode` | what a host reads: payloads -> dicts, aliases resolved by births |
| `config` | `[cloud.sparkplug]` |

docs/sparkplug.md has the mapping.
"""

from gateway.sparkplug.decode import Reader, SparkplugError, decode
from gateway.sparkplug.node import BdSeqFile, NodeSession
from gateway.sparkplug.payloads import Health, Message, NotBorn
from gateway.sparkplug.translate import Translator

__all__ = ["BdSeqFile", "Health", "Message", "NodeSession", "NotBorn", "Reader",
           "SparkplugError", "Translator", "decode"]
