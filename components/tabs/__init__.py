"""The page, one module per tab, in the lesson's order. Each module has

- `layout() -> Tab`: its controls (bound to config fields where one exists, components/controls.py)
  and panels, named;
- `wire(ui)`: its events, once every tab is laid out (`ui.<tab>.<name>` reaches the others'
  components: loading a model sets the Prune tab's layer ranges, Prune reads the Importance
  tab's criterion);
- its event functions, which turn the controls into named config objects and call handlers.py.
"""

from components.tabs import compare, evaluate, export, importance, model, prune, recover, structure

TABS = {"model": model, "structure": structure, "importance": importance, "prune": prune,
        "recover": recover, "compare": compare, "evaluate": evaluate, "export": export}
