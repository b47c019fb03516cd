cwlVersion: v1.2
class: CommandLineTool
doc: Write "<name> <bytes>" for one file.
baseCommand: [sh, -c]
arguments: ['printf "%s %s\n" "$(inputs.text.nameroot)" "`wc -c < $(inputs.text.path) | tr -d \" \"`"']
inputs:
  text: File
stdout: $(inputs.text.nameroot).count
outputs:
  line: stdout
