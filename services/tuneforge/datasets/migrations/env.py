from tuneforge.common.db import alembic_env
from tuneforge.datasets.adapters.tables import metadata

alembic_env.run(metadata)
