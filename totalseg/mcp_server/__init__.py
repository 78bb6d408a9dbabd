"""``totalseg_mcp``: the official 2.18.0 MCP server (Model Context Protocol) on top of totalseg.

It offers the official server's eight tools, with the same names, arguments and result shapes:
the registry questions (tasks, classes) are answered from ``totalseg.registry``; the image work runs our
console scripts (``TotalSegmentator``, ``totalseg_get_modality``, ``totalseg_get_phase``,
``totalseg_get_body_stats``) in subprocesses, with the flags the official server passes, so the
server itself never imports torch.
"""
