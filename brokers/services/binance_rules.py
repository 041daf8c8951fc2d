"""Binance's trading rules (exchangeInfo filters), cached, and the sizing arithmetic that obeys them.

Binance refuses an order that breaks a symbol filter (-1013 "Filter failure: LOT_SIZE", -4164 notional too
small…). We size before sending: quantity from ``qty`` or margin × leverage ÷ price, rounded *down* to the step,
then checked against the minimum quantity and notional. An order under the minimums is rejected here with the
numbers in the reason and never reaches Binance.

exchangeInfo is fetched through the adapter (``adapter.exchange_info(market)``; only adapters import SDKs) and
kept in the Django cache per symbol, refreshed after ``BINANCE_EXCHANGE_INFO_TTL`` seconds (15 minutes by
default). If a refresh fails, the previous filters are used for up to the same time again.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from django.core.cache import cache

from brokers.adapters.base import BrokerError
from brokers.calc import round_to_step, round_to_tick
from brokers.services.planning import PlanRejected

log = logging.getLogger(__name__)
ZERO = Decimal("0")


class BinanceRuleError(PlanRejected):
    """The order would break a Binance filter: refused before sending. ``details`` holds the numbers."""

    def __init__(self, code: str, message: str, **details):
        super().__init__(code, message)
        self.details = details


@dataclass(frozen=True)
class SymbolFilters:
    symbol: str
    market: str  # "spot" | "futures"
    base_asset: str
    quote_asset: str
    status: str
    tick_size: Decimal
    min_price: Decimal
    step_size: Decimal
    min_qty: Decimal
    max_qty: Decimal
    market_step_size: Decimal = ZERO  # MARKET_LOT_SIZE; zero when absent (spot often sends stepSize 0)
    market_min_qty: Decimal = ZERO
    market_max_qty: Decimal = ZERO
    min_notional: Decimal = ZERO
    notional_applies_to_market: bool = True

    def lot(self, order_type: str) -> tuple[Decimal, Decimal, Decimal]:
        """(step, min, max) an order of this type must satisfy. Market orders obey LOT_SIZE and MARKET_LOT_SIZE
        both, so the coarser step and the larger minimum win."""
        step, low, high = self.step_size, self.min_qty, self.max_qty
        if order_type == "market":
            step = max(step, self.market_step_size)
            low = max(low, self.market_min_qty)
            high = min((v for v in (high, self.market_max_qty) if v > 0), default=ZERO)
        return step, low, high

    def to_cache(self) -> dict:
        return {k: str(v) if isinstance(v, Decimal) else v for k, v in asdict(self).items()}

    @classmethod
    def from_cache(cls, data: dict) -> SymbolFilters:
        decimals = {k for k, v in cls.__dataclass_fields__.items() if v.type == "Decimal"}
        return cls(**{k: Decimal(v) if k in decimals else v for k, v in data.items()})


def parse_exchange_info(raw: dict, *, market: str) -> dict[str, SymbolFilters]:
    """Per-symbol filters from a spot or futures exchangeInfo answer."""
    out = {}
    for info in raw.get("symbols", []):
        f = {flt["filterType"]: flt for flt in info.get("filters", [])}
        price, lot, mlot = f.get("PRICE_FILTER", {}), f.get("LOT_SIZE", {}), f.get("MARKET_LOT_SIZE", {})
        if "NOTIONAL" in f:  # spot, current
            min_notional = f["NOTIONAL"].get("minNotional")
            applies = f["NOTIONAL"].get("applyMinToMarket", True)
        elif "MIN_NOTIONAL" in f:  # spot legacy: minNotional/applyToMarket; futures: notional
            min_notional = f["MIN_NOTIONAL"].get("minNotional", f["MIN_NOTIONAL"].get("notional"))
            applies = f["MIN_NOTIONAL"].get("applyToMarket", True)
        else:
            min_notional, applies = None, True
        out[info["symbol"]] = SymbolFilters(
            symbol=info["symbol"], market=market, base_asset=info.get("baseAsset", ""),
            quote_asset=info.get("quoteAsset", ""), status=info.get("status", "TRADING"),
            tick_size=_d(price.get("tickSize")), min_price=_d(price.get("minPrice")),
            step_size=_d(lot.get("stepSize")), min_qty=_d(lot.get("minQty")), max_qty=_d(lot.get("maxQty")),
            market_step_size=_d(mlot.get("stepSize")), market_min_qty=_d(mlot.get("minQty")),
            market_max_qty=_d(mlot.get("maxQty")), min_notional=_d(min_notional),
            notional_applies_to_market=bool(applies),
        )
    return out


def _d(value) -> Decimal:
    return Decimal(str(value)) if value not in (None, "") else ZERO


def _key(market: str, testnet: bool) -> str:
    return f"binance:rules:{market}{':testnet' if testnet else ''}"


def _ttl() -> int:
    return int(getattr(settings, "BINANCE_EXCHANGE_INFO_TTL", 900))


def exchange_info_refresh(*, adapter, market: str) -> dict[str, SymbolFilters]:
    """Fetch exchangeInfo now and store every symbol's filters (kept twice the TTL as a fallback)."""
    filters = parse_exchange_info(adapter.exchange_info(market), market=market)
    key = _key(market, adapter.testnet)
    cache.set_many({f"{key}:{symbol}": f.to_cache() for symbol, f in filters.items()}, timeout=2 * _ttl())
    cache.set(f"{key}:fresh", True, timeout=_ttl())
    return filters


def symbol_filters_get(*, adapter, symbol: str, market: str) -> SymbolFilters:
    """The symbol's filters from the cache, refreshing exchangeInfo when stale or when the symbol is new."""
    key = _key(market, adapter.testnet)
    cached = cache.get_many([f"{key}:fresh", f"{key}:{symbol}"])
    data = cached.get(f"{key}:{symbol}")
    if not cached.get(f"{key}:fresh") or (data is None and cache.add(f"{key}:miss:{symbol}", True, 60)):
        try:
            fresh = exchange_info_refresh(adapter=adapter, market=market)
            data = fresh[symbol].to_cache() if symbol in fresh else None
        except BrokerError as exc:
            if data is None:
                raise
            log.warning("Binance %s exchangeInfo refresh failed (%s); using the cached filters", market, exc.message)
    if data is None:
        raise BinanceRuleError("unknown_symbol", f"{symbol} is not listed on Binance {market}: check the symbol "
                               "(e.g. BTCUSDT, without a slash or an exchange prefix)", symbol=symbol)
    filters = SymbolFilters.from_cache(data)
    if filters.status != "TRADING":
        raise BinanceRuleError("symbol_not_trading", f"{symbol} is not trading on Binance {market} right now "
                               f"(status {filters.status})", symbol=symbol, status=filters.status)
    return filters


def _show(value: Decimal) -> str:
    value = value.normalize()
    return format(value.quantize(Decimal(1)) if value == value.to_integral() else value, "f")


def binance_quantity(*, symbol_filters: SymbolFilters, price, qty=None, margin=None, leverage=None,
                     order_type: str = "market", reduce_only: bool = False) -> Decimal:
    """The quantity to send: ``qty``, or ``margin`` × ``leverage`` ÷ ``price``, rounded down to the step.

    Raises ``BinanceRuleError`` (a ``PlanRejected``) when the result is under the minimum quantity or the
    minimum notional, or over the maximum quantity. Futures reduce-only orders are exempt from the notional
    minimum, as on Binance.
    """
    f = symbol_filters
    price = Decimal(str(price)) if price not in (None, "") else ZERO
    if price <= 0:
        raise BinanceRuleError("no_price", f"Sizing a {f.symbol} order needs a price: send it in the alert "
                               "(e.g. \"price\": {{close}})", symbol=f.symbol)
    if qty is not None:
        wanted = Decimal(str(qty))
    elif margin is not None and leverage is not None:
        wanted = Decimal(str(margin)) * Decimal(str(leverage)) / price
    else:
        raise ValueError("binance_quantity needs qty, or margin and leverage")
    step, low, high = f.lot(order_type)
    quantity = round_to_step(wanted, step)
    base, quote = f.base_asset, f.quote_asset
    numbers = {"symbol": f.symbol, "wanted": wanted, "qty": quantity, "price": price, "step": step}
    if quantity <= 0 or quantity < low:
        raise BinanceRuleError(
            "below_min_qty", f"{_show(wanted)} {base} rounds down to {_show(quantity)} {base} (step {_show(step)}), "
            f"under Binance's minimum quantity of {_show(low)} {base} for {f.symbol}. Increase the size.",
            min_qty=low, **numbers)
    if high and quantity > high:
        raise BinanceRuleError(
            "above_max_qty", f"{_show(quantity)} {base} is over Binance's maximum of {_show(high)} {base} per "
            f"{order_type} order for {f.symbol}", max_qty=high, **numbers)
    notional = quantity * price
    exempt = (reduce_only and f.market == "futures") or (order_type == "market" and not f.notional_applies_to_market)
    if f.min_notional and not exempt and notional < f.min_notional:
        shown = notional.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
        raise BinanceRuleError(
            "below_min_notional", f"{_show(quantity)} {base} × {_show(price)} = {shown} {quote} is under Binance's "
            f"minimum notional of {_show(f.min_notional)} {quote} for {f.symbol}. Increase the size.",
            notional=notional, min_notional=f.min_notional, **numbers)
    return Decimal(_show(quantity))


def binance_price(*, symbol_filters: SymbolFilters, price) -> Decimal:
    """A stop/target/limit price rounded to the symbol's tick size (nearest tick)."""
    f = symbol_filters
    rounded = round_to_tick(Decimal(str(price)), f.tick_size)
    if rounded <= 0 or (f.min_price and rounded < f.min_price):
        raise BinanceRuleError("bad_price", f"Price {price} is under Binance's minimum price of "
                               f"{_show(f.min_price)} for {f.symbol}", symbol=f.symbol, price=price)
    return Decimal(_show(rounded))
