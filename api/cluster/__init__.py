"""Several `python -m api` processes as one cluster (docs/CLUSTER.md "Nodes").

`nodes.py` the nodes table and heartbeats, `cluster.py` how every node comes
to serve what the registry says (deploys, rollbacks and removals across the
nodes, catch-up, takeover of placement-one modules), `forward.py` requests
and sockets of a placement-one module forwarded to its node, `routes.py` the
node-to-node calls and GET /_cweb/nodes.
"""
