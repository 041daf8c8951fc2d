from __future__ import annotations

from decimal import Decimal

from django import forms
from django.core.validators import RegexValidator, URLValidator

from brokers.models import Broker, BrokerAccount, Order
from brokers.services.connect import EXPIRY_RULES, MARKETS, live_trading_allowed

PRODUCTS = [("NRML", "NRML (carry forward)"), ("MIS", "MIS (intraday)")]


class PaperAccountForm(forms.Form):
    label = forms.CharField(max_length=80, initial="Paper account")
    currency = forms.ChoiceField(choices=[("INR", "INR"), ("USD", "USD"), ("USDT", "USDT")], initial="INR")
    paper_capital = forms.DecimalField(min_value=Decimal("1"), max_digits=16, decimal_places=2,
                                       initial=Decimal("1000000"), help_text="Starting cash of the paper account")


# --- real brokers -------------------------------------------------------------------------------------------

LIVE_OFF_HELP = ("Live trading is switched off on this TradeFlow server (LIVE_TRADING_ENABLED), so this account "
                 "trades on paper: signals are filled at market prices in a simulation and no order reaches the "
                 "broker. You can connect now and practise; live orders need the server operator to enable them.")
LIVE_ON_HELP = "Paper simulates fills at market prices; Live sends real orders to your broker account."
PROXY_HELP = ("Optional. Kite accepts API orders only from the static IP registered for your account (from April "
              "2026). If that IP is not this server's, enter an HTTP(S) or SOCKS5 proxy that leaves from it, e.g. "
              "http://user:password@203.0.113.7:3128.")
NO_SPACES = RegexValidator(r"^\S+$", "Paste the value without spaces.")
proxy_validator = URLValidator(schemes=["http", "https", "socks5", "socks5h"],
                               message="Enter a proxy URL such as http://203.0.113.7:3128 or socks5://host:1080.")


def _secret_field(label: str, help_text: str = "") -> forms.CharField:
    # PasswordInput never renders a value back, not even after a form error.
    return forms.CharField(label=label, max_length=200, validators=[NO_SPACES], help_text=help_text,
                           widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}))


def _proxy_field(help_text: str = PROXY_HELP) -> forms.CharField:
    return forms.CharField(label="Outbound proxy URL", required=False, max_length=300, validators=[proxy_validator],
                           help_text=help_text)


class BrokerConnectForm(forms.Form):
    """Fields every real-broker connect form has; Live is offered only when the server allows live trading."""

    label = forms.CharField(max_length=80)
    api_key = forms.CharField(label="API key", max_length=200, validators=[NO_SPACES],
                              widget=forms.TextInput(attrs={"autocomplete": "off"}))
    api_secret = _secret_field("API secret")
    mode = forms.ChoiceField(choices=BrokerAccount.Mode.choices, initial=BrokerAccount.Mode.PAPER,
                             widget=forms.RadioSelect)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        mode = self.fields["mode"]
        if live_trading_allowed():
            mode.help_text = LIVE_ON_HELP
        else:
            mode.choices = [(BrokerAccount.Mode.PAPER, "Paper")]
            mode.help_text = LIVE_OFF_HELP


class KiteConnectForm(BrokerConnectForm):
    product = forms.ChoiceField(choices=PRODUCTS, initial="NRML",
                                help_text="NRML carries F&O positions overnight; MIS is intraday and Zerodha "
                                          "squares it off before the close.")
    expiry_rule = forms.ChoiceField(label="Option expiry", choices=list(EXPIRY_RULES.items()),
                                    initial="nearest_weekly",
                                    help_text="Which contract an options signal trades when it names only the strike.")
    proxy = _proxy_field()

    field_order = ["label", "api_key", "api_secret", "product", "expiry_rule", "proxy", "mode"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["label"].initial = "Zerodha"
        self.fields["api_key"].help_text = "From your app at developers.kite.trade (Kite Connect)."


class BinanceConnectForm(BrokerConnectForm):
    market = forms.ChoiceField(choices=list(MARKETS.items()), initial="futures")
    testnet = forms.BooleanField(required=False, label="Testnet",
                                 help_text="Use a key from testnet.binancefuture.com (futures) or "
                                           "testnet.binance.vision (spot): play money, real exchange rules.")
    leverage = forms.IntegerField(required=False, min_value=1, max_value=125,
                                  help_text="Futures only. Set on each symbol before an order; leave empty to keep "
                                            "the leverage already set on Binance.")

    field_order = ["label", "api_key", "api_secret", "market", "testnet", "leverage", "mode"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["label"].initial = "Binance"
        self.fields["api_key"].help_text = ("Binance → API Management. Tick Reading and Spot & Margin Trading or "
                                            "Futures; leave Withdrawals off (keys that can withdraw are refused).")

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("market") != "futures":
            cleaned["leverage"] = None  # spot has no leverage
        return cleaned


class OptionsForm(forms.Form):
    """Broker options of a connected account. The proxy is write-only: blank keeps the saved one."""

    proxy = _proxy_field()
    clear_proxy = forms.BooleanField(required=False, label="Remove the saved proxy")

    def __init__(self, *args, account: BrokerAccount, **kwargs):
        options = account.options or {}
        kwargs.setdefault("initial", {name: options.get(name) for name in self.base_fields if name in options
                                      and name != "proxy"})
        super().__init__(*args, **kwargs)
        if options.get("proxy"):
            self.fields["proxy"].help_text = "Leave empty to keep the saved proxy; enter a URL to replace it."
        else:
            del self.fields["clear_proxy"]


class KiteOptionsForm(OptionsForm):
    product = KiteConnectForm.base_fields["product"]
    expiry_rule = KiteConnectForm.base_fields["expiry_rule"]
    field_order = ["product", "expiry_rule", "proxy", "clear_proxy"]


class BinanceOptionsForm(OptionsForm):
    testnet = BinanceConnectForm.base_fields["testnet"]
    leverage = BinanceConnectForm.base_fields["leverage"]
    field_order = ["testnet", "leverage", "proxy", "clear_proxy"]

    def __init__(self, *args, account: BrokerAccount, **kwargs):
        super().__init__(*args, account=account, **kwargs)
        saved = "; leave empty to keep the saved one" if account.options.get("proxy") else ""
        self.fields["proxy"].help_text = f"Optional HTTP(S) or SOCKS5 proxy for requests to Binance{saved}."
        if (account.options or {}).get("market") != "futures":
            del self.fields["leverage"]


class CredentialsForm(forms.Form):
    """New key and secret. Write-only: the saved ones are never rendered into an input."""

    api_key = BrokerConnectForm.base_fields["api_key"]
    api_secret = _secret_field("API secret")


class BinanceCredentialsForm(CredentialsForm):
    testnet = BinanceConnectForm.base_fields["testnet"]

    def __init__(self, *args, account: BrokerAccount, **kwargs):
        kwargs.setdefault("initial", {"testnet": bool((account.options or {}).get("testnet"))})
        super().__init__(*args, **kwargs)


OPTIONS_FORMS = {Broker.KITE: KiteOptionsForm, Broker.BINANCE: BinanceOptionsForm}


def credentials_form(account: BrokerAccount, *args, **kwargs) -> forms.Form:
    if account.broker == Broker.BINANCE:
        return BinanceCredentialsForm(*args, account=account, **kwargs)
    return CredentialsForm(*args, **kwargs)


class OrderFilterForm(forms.Form):
    """The orders page's filters (GET). Every field optional; an invalid value is ignored, not an error page."""

    account = forms.ModelChoiceField(queryset=BrokerAccount.objects.none(), required=False, empty_label="All accounts")
    status = forms.ChoiceField(choices=[("", "Any status"), *Order.Status.choices], required=False)
    side = forms.ChoiceField(choices=[("", "Buy and sell"), *Order.Side.choices], required=False)
    symbol = forms.CharField(max_length=64, required=False)
    since = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}), label="From")
    until = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}), label="To")

    def __init__(self, *args, accounts, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["account"].queryset = accounts

    def filters(self) -> dict:
        self.is_valid()  # cleaned_data keeps the fields that are valid; the others show their error
        return {k: v for k, v in self.cleaned_data.items() if v not in (None, "")}
