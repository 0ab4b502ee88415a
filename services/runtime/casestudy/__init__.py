"""The case study of DESIGN §1 as a demo: generate it, replay it on a running stack, report.

``python -m services.runtime.casestudy`` (what ``make demo`` runs) does the three in turn;
see the README's "The demo" section.
"""
