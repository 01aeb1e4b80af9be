"""`python -m playledger.callback` prints the plugin folder, for ANSIBLE_CALLBACK_PLUGINS."""

from playledger.callback import plugin_path

print(plugin_path())
