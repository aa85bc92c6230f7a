"""The feed's trigger on an UPDATE of ``device_updates`` (0011, 0012) pairs each new row
with its old version through a hash join, not a nested loop (PostgreSQL).

PL/pgSQL plans the trigger's statement once a connection and keeps the plan. A transition
table carries no statistics, so the plan a connection's first UPDATE made (often a batch
of one failure report) was a nested loop for every later batch: each new row compared
with every old one, n^2 pairs. Measured on PostgreSQL 15: a batch of 300 reports compared
89,700 pairs (11.5 ms); 500, 12 of the statement's 15 ms; at 100 (a busy server's batch)
about 5 us of the database's CPU a report. With nested loops off inside the function (and
only there: the setting is the function's own), an UPDATE of 500 rows took 3.7 ms against
15.4 (3.1 with no trigger at all). A later migration that replaces the function (CREATE OR
REPLACE resets its settings) must set it again; the test that reads the trigger's plan
(tests/test_server_directory.py) would fail otherwise.

Revision ID: 0015
Revises: 0014
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

_FUNCTION = "mpseal_updates_updated()"  # 0011's name; its body is 0012's


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite: no feed
    op.execute(f"ALTER FUNCTION {_FUNCTION} SET enable_nestloop = off")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"ALTER FUNCTION {_FUNCTION} RESET enable_nestloop")
