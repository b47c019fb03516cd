cwlVersion: v1.2
class: CommandLineTool
doc: Concatenate the header and every measurement into report.txt.
baseCommand: cat
inputs:
  header:
    type: File
    inputBinding: {position: 1}
  lines:
    type: File[]
    inputBinding: {position: 2}
stdout: report.txt
outputs:
  report: stdout
