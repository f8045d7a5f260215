#!/usr/bin/env python3
"""Man pages for `make install`, in roff, from what the programs and docs say.

    tools/man.py command BINARY SECTION > NAME.SECTION   # from BINARY --experimental-dump-help
    tools/man.py markdown FILE.md NAME SECTION TITLE > NAME.SECTION
    tools/man.py toml FILE.toml NAME SECTION TITLE > NAME.SECTION

A command's page lists its options and each subcommand's; a document's page is
its Markdown (headings, paragraphs, lists, code and tables) or the commented
TOML file itself. Nothing is written by hand twice.
"""
import json
import re
import subprocess
import sys

VERSION = "0.1.0"


def escape(text):
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line.startswith((".", "'")) else line for line in text.split("\n"))


def inline(text):
    """Markdown inline code and emphasis to roff fonts."""
    text = escape(text)
    text = re.sub(r"`([^`]+)`", r"\\fB\1\\fR", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"\\fB\1\\fR", text)
    text = re.sub(r"\[([^\]]+)\]\([^)]+\)", r"\1", text)
    return text


def header(name, section, title):
    return f'.TH {name.upper()} {section} "" "diffusiond {VERSION}" "{title}"\n'


def option_line(argument):
    names = ", ".join(("--" if n["kind"] == "long" else "-") + n["name"] for n in argument.get("names", []))
    if argument["kind"] == "positional":
        return f"<{argument['valueName']}>"
    if argument["kind"] == "option":
        names += f" <{argument['valueName']}>"
    return names


def command_page(binary, section):
    help_json = json.loads(subprocess.run([binary, "--experimental-dump-help"], check=True, capture_output=True).stdout)
    command = help_json["command"]
    name = command["commandName"]
    out = [header(name, section, "diffusiond"), ".SH NAME\n", f"{escape(name)} \\- {inline(command.get('abstract', ''))}\n"]
    out.append(".SH SYNOPSIS\n")
    out.append(f".B {escape(name)}\n[\\fIoptions\\fR] [\\fIsubcommand\\fR]\n" if command.get("subcommands") else f".B {escape(name)}\n")
    if command.get("discussion"):
        out += [".SH DESCRIPTION\n", inline(command["discussion"]) + "\n"]

    def options(arguments):
        lines = []
        for argument in arguments:
            if not argument.get("shouldDisplay", True):
                continue
            lines += [".TP\n", f"\\fB{escape(option_line(argument))}\\fR\n", inline(argument.get("abstract", "")) + "\n"]
        return lines

    out += [".SH OPTIONS\n"] + options(command.get("arguments", []))
    subcommands = [s for s in command.get("subcommands", []) if s.get("shouldDisplay", True)]
    if subcommands:
        out.append(".SH COMMANDS\n")
        for sub in subcommands:
            out += [".SS ", escape(sub["commandName"]), "\n", inline(sub.get("abstract", "")) + "\n"]
            if sub.get("discussion"):
                out += [".PP\n", inline(sub["discussion"]) + "\n"]
            out += options(sub.get("arguments", []))
    out += [".SH SEE ALSO\n", "diffusiond(8), diffctl(1), diffusiond.toml(5), diffusiond\\-jobs(5)\n"]
    return "".join(out)


def markdown_page(path, name, section, title):
    lines = open(path, encoding="utf-8").read().split("\n")
    out = [header(name, section, title), ".SH NAME\n", f"{escape(name)} \\- {inline(title)}\n"]
    out.append(".SH DESCRIPTION\n")
    code = False
    for line in lines:
        if line.startswith("```"):
            code = not code
            out.append(".PP\n.nf\n" if code else ".fi\n")
        elif code:
            out.append(escape(line) + "\n")
        elif line.startswith("    "):
            out += [".PP\n.nf\n", escape(line[4:]) + "\n", ".fi\n"]
        elif line.startswith("# "):
            continue
        elif line.startswith("## ") or line.startswith("### "):
            out.append((".SH " if line.startswith("## ") else ".SS ") + escape(line.lstrip("# ").upper() if line.startswith("## ") else line.lstrip("# ")) + "\n")
        elif line.startswith("|"):
            if re.match(r"^\|[-| ]+\|$", line):
                continue
            cells = [c.strip() for c in line.strip("|").split("|")]
            out += [".TP\n", f"{inline(cells[0])}\n", " \\(em ".join(inline(c) for c in cells[1:]) + "\n"]
        elif re.match(r"^\s*[-*] ", line):
            out += [".IP \\(bu 2\n", inline(re.sub(r"^\s*[-*] ", "", line)) + "\n"]
        elif not line.strip():
            out.append(".PP\n")
        else:
            out.append(inline(line.strip()) + "\n")
    return "".join(out)


def toml_page(path, name, section, title):
    out = [header(name, section, title), ".SH NAME\n", f"{escape(name)} \\- {inline(title)}\n", ".SH DESCRIPTION\n"]
    table = None
    for line in open(path, encoding="utf-8").read().split("\n"):
        if line.startswith("[") and line.endswith("]"):
            table = line
            out += [".SH ", escape(line), "\n"]
        elif re.match(r"^# ?[a-z_]+ = ", line):
            # A key shown commented out: an example, not prose.
            out += [".RS\n.nf\n", f"\\fI{escape(line)}\\fR\n", ".fi\n.RE\n"]
        elif line.startswith("#"):
            out.append(inline(line.lstrip("# ").rstrip()) + "\n" if line.strip("# ") else ".PP\n")
        elif line.strip():
            out += [".RS\n.nf\n", f"\\fB{escape(line)}\\fR\n", ".fi\n.RE\n"]
    return "".join(out)


if __name__ == "__main__":
    kind = sys.argv[1]
    if kind == "command":
        sys.stdout.write(command_page(sys.argv[2], sys.argv[3]))
    elif kind == "markdown":
        sys.stdout.write(markdown_page(*sys.argv[2:6]))
    elif kind == "toml":
        sys.stdout.write(toml_page(*sys.argv[2:6]))
    else:
        sys.exit(f"usage: {sys.argv[0]} command|markdown|toml ...")
