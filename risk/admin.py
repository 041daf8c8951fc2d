from django.contrib import admin, messages
from django.shortcuts import redirect, render
from django.urls import path

from accounts.admin import UserAdmin
from risk.calendar import CalendarImportError, calendar_import
from risk.forms import CalendarImportForm
from risk.models import CalendarEvent, RiskAdmission, RiskConfig, TradingHalt
from risk.selectors import trading_halted
from risk.services import trading_halt_set
from risk.stops import emergency_stop, stop_summary


@admin.register(RiskConfig)
class RiskConfigAdmin(admin.ModelAdmin):
    list_display = ["user", "enabled", "max_daily_loss", "max_trades_per_day", "max_open_positions",
                    "trading_hours_enabled", "news_lockout_enabled", "updated_at"]
    search_fields = ["user__email"]
    raw_id_fields = ["user"]


@admin.register(CalendarEvent)
class CalendarEventAdmin(admin.ModelAdmin):
    list_display = ["starts_at", "market", "impact", "title"]
    list_filter = ["impact", "market"]
    search_fields = ["title", "market"]
    change_list_template = "risk/admin_calendar_changelist.html"

    def get_urls(self):
        return [path("import/", self.admin_site.admin_view(self.import_view), name="risk_calendarevent_import"),
                *super().get_urls()]

    def import_view(self, request):
        form = CalendarImportForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            upload = form.cleaned_data["file"]
            try:
                result = calendar_import(name=upload.name, content=upload.read())
            except CalendarImportError as exc:
                form.add_error("file", str(exc))
            else:
                messages.success(request, f"{result.created} event(s) created, {result.updated} updated.")
                for error in result.errors:
                    messages.warning(request, error)
                return redirect("admin:risk_calendarevent_changelist")
        return render(request, "risk/admin_calendar_import.html", {**self.admin_site.each_context(request),
                                                                     "form": form, "title": "Import calendar"})


@admin.register(TradingHalt)
class TradingHaltAdmin(admin.ModelAdmin):
    """The global kill switch: its history, and two actions (any selection) to halt or resume all trading."""

    list_display = ["created_at", "halted", "reason", "actor"]
    readonly_fields = ["created_at", "halted", "reason", "actor"]
    actions = ["halt_trading", "resume_trading"]

    def has_add_permission(self, request):
        return False

    def changelist_view(self, request, extra_context=None):
        if "action" in request.POST and not request.POST.getlist(admin.helpers.ACTION_CHECKBOX_NAME):
            # The switch must work before any history exists: act without a selection.
            post = request.POST.copy()
            post.setlist(admin.helpers.ACTION_CHECKBOX_NAME, ["0"])
            request.POST = post
        state = "ON: all trading is halted" if trading_halted() else "off: trading runs"
        return super().changelist_view(request, {**(extra_context or {}), "title": f"Kill switch is {state}"})

    @admin.action(description="Halt all trading (kill switch ON)")
    def halt_trading(self, request, queryset):
        trading_halt_set(halted=True, actor=request.user, reason=f"admin {request.user}")
        self.message_user(request, "Trading halted: webhooks are still logged, nothing executes.", messages.WARNING)

    @admin.action(description="Resume trading (kill switch OFF)")
    def resume_trading(self, request, queryset):
        trading_halt_set(halted=False, actor=request.user, reason=f"admin {request.user}")
        self.message_user(request, "Trading resumed.", messages.SUCCESS)


@admin.register(RiskAdmission)
class RiskAdmissionAdmin(admin.ModelAdmin):
    list_display = ["created_at", "user", "execution", "value"]
    raw_id_fields = ["execution", "user"]


@admin.action(description="Emergency Stop for this user (close all positions, disable accounts)")
def emergency_stop_action(modeladmin, request, queryset):
    for user in queryset:
        result = emergency_stop(user=user, actor=request.user)
        level = messages.ERROR if result["errors"] else messages.SUCCESS
        modeladmin.message_user(request, f"{user}: Emergency Stop: {stop_summary(result)}", level)


UserAdmin.actions = [*(UserAdmin.actions or []), emergency_stop_action]
