"""A paginator whose last pages cost what its first pages cost.

``OFFSET n`` makes the database walk (and, on PostgreSQL, fetch) n rows before the page:
the last page of 100,000 runs took 0.2 s on PostgreSQL against 2 ms for the first. Past
the middle, :class:`EndAwarePaginator` reads the page from the other end instead (the
queryset's ordering reversed, offset ``count - top``) and turns the rows back around, so
no page walks more than half the rows. The ordering must be total (end with the
primary key), or rows with equal keys could swap pages.
"""

from __future__ import annotations

from django.core.paginator import Paginator
from django.db.models import QuerySet


class EndAwarePaginator(Paginator):
    def page(self, number):
        number = self.validate_number(number)
        bottom = (number - 1) * self.per_page
        top = min(bottom + self.per_page, self.count)
        if not isinstance(self.object_list, QuerySet) or bottom <= self.count // 2:
            return super().page(number)
        rows = list(self.object_list.reverse()[self.count - top : self.count - bottom])
        rows.reverse()
        return self._get_page(rows, number, self)
