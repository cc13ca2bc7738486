"""Source-framework intake: one module per framework, each with ``load``, ``from_object`` and
``describe``. :mod:`edgekit.model` dispatches to them by format name."""
