"""The one compiled part: the lineage graph's answer writer (see graph_index.py).

Everything else is in pyproject.toml. The extension is optional: without a C compiler the
install goes on and the lineage service answers with the pure-Python index (three times
slower for answers of thousands of nodes; the log line of the graph copy's load says which
is used, and CI fails without it: tests/unit/lineage/test_graph_index.py).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "services.lineage.domain._graph_answer",
            sources=["services/lineage/domain/_graph_answer.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        )
    ]
)
