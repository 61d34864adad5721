"""What a scheduled configuration row shares (a backup :class:`~jobs.models.Job`, a
:class:`~jobs.models.PlanningExport`): it remembers the schedule fields it was loaded
with, so that saving it knows whether ``next_run_at`` must be computed again.

A plain mixin (no fields, so no migration); the model names its ``SCHEDULE_FIELDS``.
"""

from __future__ import annotations


class ScheduleTracking:
    SCHEDULE_FIELDS: tuple[str, ...] = ()

    def _schedule(self) -> tuple:
        return tuple(getattr(self, f) for f in self.SCHEDULE_FIELDS)

    def schedule_changed(self) -> bool:
        """Whether the schedule differs from the one loaded (or saved) last; True for a
        row that was never loaded with all of its schedule fields."""
        loaded = getattr(self, "_loaded_schedule", None)
        return loaded is None or loaded != self._schedule()

    def remember_schedule(self) -> None:
        """The schedule as it is now counts as loaded (after ``next_run_at`` followed it)."""
        self._loaded_schedule = self._schedule()

    @classmethod
    def from_db(cls, db, field_names, values):
        instance = super().from_db(db, field_names, values)
        if all(f in field_names for f in cls.SCHEDULE_FIELDS):
            instance.remember_schedule()
        return instance
