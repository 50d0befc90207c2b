from tuneforge.common.db import alembic_env
from tuneforge.training.adapters.tables import metadata

alembic_env.run(metadata)
