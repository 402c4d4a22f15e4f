"""`incidents bench`: the figures of issue #9, each beside a raw baseline of the same run.

`runner` runs them and writes the results, `figures` measures one figure each, `stack`
starts a private stack (Tansu, a fresh database, the four services on free ports) and
`report` turns results into a table, a JSON file and a markdown summary.
"""
