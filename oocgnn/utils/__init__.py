"""Small helpers shared by every stage: sizes, memory accounting, atomic files."""
