"""Routing statistics and figures: which paths the gates open, per image and on average."""
from .routing import draw_image_route, draw_routing, format_gflops, overlay_route, render_route
from .stats import RoutingStats, collect_routing_stats

__all__ = [
    "RoutingStats", "collect_routing_stats", "draw_image_route", "draw_routing", "format_gflops",
    "overlay_route", "render_route",
]
