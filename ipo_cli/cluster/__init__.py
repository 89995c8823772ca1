"""Running units of work elsewhere: one executor interface, a local one and (with the
`[ray]` extra) a Ray one. The only package of ipo that imports Ray, and only when a
command is given `--ray` (cluster/ray_executor.py)."""
