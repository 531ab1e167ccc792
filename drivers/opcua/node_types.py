"""The variant type a write to each OPC UA node must carry, read from its DataType attribute."""

from __future__ import annotations

from collections.abc import Mapping

from asyncua import Client, ua
from asyncua.common.ua_utils import data_type_to_variant_type

from drivers.opcua.codec import status_text

_BUILT_IN = frozenset(range(1, 26))


async def write_types(client: Client,
                      nodes: Mapping[str, ua.NodeId]) -> dict[str, ua.VariantType | str]:
    """Point name -> the variant type its node's DataType asks for, or why it is unknown.

    One Read call for all nodes, at connect. The reason (a string) says what the operator
    must fix, e.g. a node id that does not exist on the server: a write to that point then
    fails with it instead of guessing a type the server would refuse.
    """
    if not nodes:
        return {}
    names = list(nodes)
    answers = await client.uaclient.read_attributes([nodes[n] for n in names],
                                                    ua.AttributeIds.DataType)
    types: dict[str, ua.VariantType | str] = {}
    for name, dv in zip(names, answers, strict=True):
        node = nodes[name].to_string()
        if dv.StatusCode is not None and not dv.StatusCode.is_good():
            types[name] = (f"node {node} cannot be written: the server answered "
                           f"{status_text(dv.StatusCode)} (check its node_id)")
            continue
        data_type = dv.Value.Value if dv.Value is not None else None
        if not isinstance(data_type, ua.NodeId):
            types[name] = f"node {node}: the server did not tell its data type"
        elif data_type.NamespaceIndex == 0 and isinstance(data_type.Identifier, int) and \
                data_type.Identifier in _BUILT_IN:
            types[name] = ua.VariantType(data_type.Identifier)
        else:  # a subtype (Duration, UtcTime, an enumeration): the built-in type it derives from
            try:
                types[name] = await data_type_to_variant_type(client.get_node(data_type))
            except (ua.UaError, ValueError, KeyError):
                types[name] = (f"node {node}: its data type {data_type.to_string()} is not "
                               "one Millwright can write")
    return types
