"""The device side seen from the host: transports, the benchmark agent, power samplers.

Import the submodules directly (``edgekit.device.transport``, ``edgekit.device.agent``,
``edgekit.device.power``); this package imports nothing heavy.
"""
