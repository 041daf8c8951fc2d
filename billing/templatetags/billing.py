from django import template

register = template.Library()


@register.simple_tag(takes_context=True)
def billing_usage(context):
    """The signed-in user's plan usage for ``fragment_usage.html`` (two queries; none for anonymous pages)."""
    from billing.services import usage_get

    user = getattr(context.get("request"), "user", None)
    if user is None or not user.is_authenticated:
        return None
    return usage_get(user=user)
