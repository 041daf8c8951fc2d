"""Business logic of the brokers app; views, API views, tasks and admin actions call these."""

from brokers.services.accounts import (  # noqa: F401
    account_create,
    account_set_enabled,
    api_key_authenticate,
    api_key_authenticate_many,
    api_key_regenerate,
)
from brokers.services.execution import execution_create_for_signal, execution_run  # noqa: F401
from brokers.services.positions import position_apply_fill, position_close  # noqa: F401
