"""Development tooling: the local stack, benchmarks, chaos runs, the demo, trace views.

Not deployed: the image (Dockerfile) copies only `services`. The `incidents` command
(services/cli.py) imports this package inside the commands that need it. See README.md.
"""
