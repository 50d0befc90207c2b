from tuneforge.checkpoints.adapters.tables import metadata
from tuneforge.common.db import alembic_env

alembic_env.run(metadata)
