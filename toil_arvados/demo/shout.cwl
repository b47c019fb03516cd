cwlVersion: v1.2
class: CommandLineTool
doc: Upper-case one word into <word>.txt.
baseCommand: [sh, -c]
arguments: ['printf "%s\n" "$(inputs.word)" | tr a-z A-Z']
inputs:
  word: string
stdout: $(inputs.word).txt
outputs:
  loud: stdout
