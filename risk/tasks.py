from celery import shared_task

from risk.services import daily_loss_sweep


@shared_task(ignore_result=True, time_limit=120, soft_time_limit=100)
def daily_loss_sweep_task() -> int:
    return daily_loss_sweep()
