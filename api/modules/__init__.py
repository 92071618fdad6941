"""Module lifecycle in the api: which versions of which modules serve.

    version.py     Version, VersionState: one artifact in one worker
    spawner.py     the one path from a hash to a running worker (load ->
                   validate -> start -> connect), discarding it on any failure
    host.py        ModuleHost: the active versions and the route table;
                   deploy (activate), removal, restore, retiring
    supervisor.py  crashes and hangs: restart with backoff, quarantine, reload
                   after an agent restart
    pinning.py     versions kept or loaded for jobs pinned to an artifact, and
                   JobDemand, what the host asks of the job service

Import from the submodules (api.modules.host, api.modules.version): this
file imports nothing, so api/sockets.py can import version.py without a loop.
"""
