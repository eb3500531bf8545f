"""The Compare window: the same instruction through two or three variants (or two models),
answers side by side with speed, memory and agreement, and blind A/B votes. The work is in
dolly_desktop/compare; this is the window's side."""

from dolly_desktop.ui.compare.view import CompareWindow, open_compare

__all__ = ["CompareWindow", "open_compare"]
