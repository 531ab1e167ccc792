"""Modbus TCP and RTU driver: config model, request planner, register codec and poller."""
